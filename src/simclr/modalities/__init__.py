"""Modalities: images, audio, time series, text and tables behind one interface, and a registry.

A modality is registered by name with :func:`register_modality`, from Python or from an installed
package's entry point in the group ``simclr.modalities`` (``name = "module:Class"``, read once on
the first registry lookup). :func:`modality_for` returns the
:class:`~simclr.modalities.base.Modality` a configuration asks for (``data.modality``, or
detected from ``data.path`` when ``auto``); the loop, checkpoints and evaluation commands use
nothing else. docs/modalities.md shows how to add one.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from simclr.config import Config, recipe_names, register_recipe_file
from simclr.errors import UserError
from simclr.modalities.base import Fitted, Modality, file_suffixes

__all__ = [
    "ENTRY_POINT_GROUP",
    "default_recipe",
    "detect_modality",
    "modality_for",
    "modality_names",
    "modality_type",
    "register_modality",
    "resolve_modality",
]

ENTRY_POINT_GROUP = "simclr.modalities"
"""Installed packages add modalities with entry points of this group: ``name = "module:Class"``
(the class may name its default recipe in :attr:`Modality.recipe`)."""

log = logging.getLogger("simclr")


@dataclass
class _Entry:
    spec: str
    """``module:Class``, imported on first use."""
    kind: type[Modality] | None
    """The class, once imported."""
    recipe: str | Path | None
    """The default recipe as given (``None``: the class's :attr:`~Modality.recipe`)."""


_REGISTRY: dict[str, _Entry] = {}
"""Every modality by name, in the order :func:`detect_modality` asks them."""
_entry_points_loaded = False


def register_modality(
    name: str, target: type[Modality] | str, *, recipe: str | Path | None = None
) -> None:
    """Make a modality reachable as ``data.modality: name`` (and ``--modality name``).

    Modalities are asked to detect data in the order they were registered, the built-in ones
    first.

    Args:
        name: The modality's name (its class's :attr:`~Modality.name`).
        target: The :class:`Modality` subclass, or ``"module:Class"`` to import it on first use
            (so that ``simclr`` starts without loading every modality's libraries).
        recipe: The recipe a run on this modality's data starts from when none is named: a
            recipe name, or the path of a YAML file (registered as a recipe under its stem).
            ``None``: the class's :attr:`~Modality.recipe`.

    Raises:
        ValueError: ``name`` is ``auto`` or taken by another class, or the recipe is unknown.
        TypeError: ``target`` is not a :class:`Modality` subclass whose ``name`` is ``name``.
    """
    if name == "auto" or not name:
        raise ValueError(f"{name!r} cannot name a modality")
    spec = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    known = _REGISTRY.get(name)
    if known is not None and known.spec != spec:
        raise ValueError(f"a modality named {name!r} is registered already ({known.spec})")
    if not isinstance(target, str):
        _check_class(name, target, spec)
    if isinstance(recipe, Path):
        recipe = register_recipe_file(recipe)
    elif recipe is not None and recipe not in recipe_names():
        raise ValueError(f"modality {name!r}: unknown recipe {recipe!r}")
    _REGISTRY[name] = _Entry(spec, None if isinstance(target, str) else target, recipe)


def modality_names() -> tuple[str, ...]:
    """The registered modalities, in detection order."""
    return tuple(_registry())


def modality_type(name: str) -> type[Modality]:
    """The class of the modality called ``name``.

    Raises:
        UserError: no modality has that name.
    """
    entry = _entry(name)
    if entry.kind is None:
        module, _, attribute = entry.spec.partition(":")
        kind = getattr(importlib.import_module(module), attribute)
        entry.kind = _check_class(name, kind, entry.spec)
    return entry.kind


def default_recipe(name: str) -> str | None:
    """The recipe a run on ``name`` data starts from when none is named (``None``: defaults)."""
    entry = _entry(name)
    if entry.recipe is None:
        entry.recipe = modality_type(name).recipe
    if isinstance(entry.recipe, Path):
        entry.recipe = register_recipe_file(entry.recipe)
    return entry.recipe


def detect_modality(spec: str) -> str:
    """The first registered modality that claims the data at ``spec``.

    Raises:
        UserError: no modality recognises it (the message names ``--modality``).
    """
    named = spec == "digits" or ":" in spec  # built-in or library datasets, URLs
    if not named and not Path(spec).expanduser().exists():
        raise UserError(f"data path {spec} does not exist")
    if Path(spec).expanduser().is_dir() and not file_suffixes(Path(spec).expanduser()):
        raise UserError(f"{spec} holds no images, audio or other data files")
    for name in modality_names():
        if modality_type(name).detect(spec):
            return name
    names = ", ".join(modality_names())
    raise UserError(f"cannot tell the modality of {spec}; set --modality ({names})")


def resolve_modality(cfg: Config) -> Config:
    """``cfg`` with ``data.modality`` decided (detected from ``data.path`` when ``auto``).

    Raises:
        UserError: ``data.modality`` names no registered modality, or detection fails.
    """
    if cfg.data.modality == "auto":
        return replace(cfg, data=replace(cfg.data, modality=detect_modality(cfg.data.path)))
    if cfg.data.modality not in _registry():
        names = ", ".join(("auto", *_registry()))
        raise UserError(f"data.modality must be one of {names} (got {cfg.data.modality!r})")
    return cfg


def modality_for(cfg: Config, fitted: Fitted | None = None) -> Modality:
    """The modality ``cfg`` asks for, bound to it and to ``fitted`` (see :class:`Modality`)."""
    resolved = resolve_modality(cfg)
    return modality_type(resolved.data.modality)(resolved, fitted)


def _registry() -> dict[str, _Entry]:
    """The registry, with the installed packages' entry points read on the first call."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if point.name in _REGISTRY and _REGISTRY[point.name].spec == point.value:
                continue  # registered by its own code as well
            try:
                register_modality(point.name, point.value)
            except ValueError as err:
                log.warning("entry point %s = %s left out: %s", point.name, point.value, err)
    return _REGISTRY


def _check_class(name: str, kind: object, spec: str) -> type[Modality]:
    """``kind`` when it is a :class:`Modality` subclass called ``name``."""
    if not (isinstance(kind, type) and issubclass(kind, Modality)):
        raise TypeError(f"modality {name!r}: {spec} is not a Modality subclass")
    if getattr(kind, "name", None) != name:
        raise TypeError(f"modality {name!r}: {spec} is called {getattr(kind, 'name', None)!r}")
    return kind


def _entry(name: str) -> _Entry:
    registry = _registry()
    if name not in registry:
        raise UserError(f"unknown modality {name!r}; choose from {', '.join(registry)}")
    return registry[name]


register_modality("image", "simclr.modalities.image:ImageModality")
register_modality("audio", "simclr.modalities.audio:AudioModality", recipe="audio-small")
register_modality(
    "timeseries", "simclr.modalities.timeseries:TimeSeriesModality", recipe="timeseries-small"
)
register_modality("text", "simclr.modalities.text:TextModality", recipe="text-small")
register_modality("tabular", "simclr.modalities.tabular:TabularModality", recipe="tabular-small")
