"""Modalities: images, audio, time series, text and tables behind one interface.

:func:`modality_for` returns the :class:`~simclr.modalities.base.Modality` a configuration asks
for (``data.modality``, or detected from ``data.path`` when ``auto``); the loop, checkpoints and
evaluation commands use nothing else. docs/modalities.md shows how to add one.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from simclr.config import Config
from simclr.errors import UserError
from simclr.modalities.base import Modality, file_suffixes

MODALITY_TYPES: dict[str, str] = {
    "image": "simclr.modalities.image:ImageModality",
    "audio": "simclr.modalities.audio:AudioModality",
    "timeseries": "simclr.modalities.timeseries:TimeSeriesModality",
    "text": "simclr.modalities.text:TextModality",
    "tabular": "simclr.modalities.tabular:TabularModality",
}
"""Every modality by name (``module:class``, imported on first use so that ``simclr`` starts
without loading every modality's libraries), in the order :func:`detect_modality` asks them."""


def modality_type(name: str) -> type[Modality]:
    """The class of the modality called ``name``."""
    if name not in MODALITY_TYPES:
        raise UserError(f"unknown modality {name!r}; choose from {', '.join(MODALITY_TYPES)}")
    module, _, attribute = MODALITY_TYPES[name].partition(":")
    kind: type[Modality] = getattr(importlib.import_module(module), attribute)
    return kind


def detect_modality(spec: str) -> str:
    """The first modality, in :data:`MODALITY_TYPES` order, that claims the data at ``spec``.

    Raises:
        UserError: no modality recognises it (the message names ``--modality``).
    """
    named = spec == "digits" or ":" in spec  # built-in or library datasets, URLs
    if not named and not Path(spec).expanduser().exists():
        raise UserError(f"data path {spec} does not exist")
    if Path(spec).expanduser().is_dir() and not file_suffixes(Path(spec).expanduser()):
        raise UserError(f"{spec} holds no images, audio or other data files")
    for name in MODALITY_TYPES:
        if modality_type(name).detect(spec):
            return name
    names = ", ".join(MODALITY_TYPES)
    raise UserError(f"cannot tell the modality of {spec}; set --modality ({names})")


def resolve_modality(cfg: Config) -> Config:
    """``cfg`` with ``data.modality`` decided (detected from ``data.path`` when ``auto``)."""
    if cfg.data.modality != "auto":
        return cfg
    return replace(cfg, data=replace(cfg.data, modality=detect_modality(cfg.data.path)))


def modality_for(cfg: Config) -> Modality:
    """The modality ``cfg`` asks for, bound to it."""
    resolved = resolve_modality(cfg)
    return modality_type(resolved.data.modality)(resolved)
