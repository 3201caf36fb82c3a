"""The one place a command's configuration is resolved.

Layers, first to last: the dataclass defaults (or a resumed run's saved config), the recipe,
the ``--config`` file, the command's flags and ``--set`` overrides. The modality is decided once,
from the layers (``data.modality``, else detected from ``data.path``), before the config is
built; data that names no recipe starts from its modality's default recipe (see
:func:`simclr.modalities.default_recipe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simclr.config import Config, DataConfig, build_config, read_yaml, recipe_overrides
from simclr.modalities import default_recipe, detect_modality, modality_type


def resolve_config(
    *,
    recipe: str | None = None,
    config_file: Path | None = None,
    overrides: Sequence[dict[str, Any]] = (),
    base: dict[str, Any] | None = None,
    image_recipe: str | None = None,
) -> Config:
    """The configuration of a command, with ``data.modality`` decided.

    Args:
        recipe: ``--recipe``: a named recipe.
        config_file: ``--config``: a YAML file of overrides.
        overrides: The flags and ``--set`` assignments, as nested dicts, in order.
        base: A resumed run's saved config (it replaces the defaults and the default recipe).
        image_recipe: The recipe of a command for which the paper's ImageNet defaults make no
            sense (``simclr views`` draws the 32 px ``cpu-small`` views), when none is named.

    Raises:
        UserError: an unknown recipe, key, value or modality, an unreadable file, or data whose
            modality cannot be told.
    """
    layers = [read_yaml(config_file)] if config_file else []
    layers += list(overrides)
    named = [recipe_overrides(recipe)] if recipe else []
    first = [base] if base else []
    modality = _decide_modality([*first, *named, *layers])
    if base is None and recipe is None:
        start = default_recipe(modality) or image_recipe
        named = [recipe_overrides(start)] if start else []
    return build_config(*first, *named, *layers, {"data": {"modality": modality}})


def _decide_modality(layers: Sequence[dict[str, Any]]) -> str:
    """``data.modality`` as the last layer that sets it says, else detected from ``data.path``."""
    modality, path = "auto", DataConfig.path
    for layer in layers:
        data = layer.get("data") or {}
        if not isinstance(data, dict):
            continue
        modality = str(data.get("modality", modality))
        path = str(data.get("path", path))
    if modality == "auto":
        return detect_modality(path)
    modality_type(modality)  # an unknown name is a one-line error here
    return modality
