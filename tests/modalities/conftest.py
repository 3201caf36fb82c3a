"""The toy modality of ``toy.py``, registered for a test and unregistered after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import simclr.config
import simclr.modalities
from simclr.modalities import register_modality
from tests.modalities.toy import RECIPE, ToyModality


@contextlib.contextmanager
def restored_registry() -> Iterator[None]:
    """Put the modality and recipe registries back as they were on leaving."""
    modalities = dict(simclr.modalities._REGISTRY)
    loaded = simclr.modalities._entry_points_loaded
    recipes = dict(simclr.config._RECIPE_FILES)
    try:
        yield
    finally:
        simclr.modalities._REGISTRY.clear()
        simclr.modalities._REGISTRY.update(modalities)
        simclr.modalities._entry_points_loaded = loaded
        simclr.config._RECIPE_FILES.clear()
        simclr.config._RECIPE_FILES.update(recipes)


@contextlib.contextmanager
def registered_toy() -> Iterator[None]:
    """The toy modality registered, with its recipe ``toy-small``."""
    with restored_registry():
        register_modality("toy", ToyModality, recipe=RECIPE)
        yield


@pytest.fixture
def toy() -> Iterator[None]:
    with registered_toy():
        yield
