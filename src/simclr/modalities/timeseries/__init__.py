"""Time series, univariate and multivariate: UCR/UEA data, batched series views, a 1-D ResNet.

* reading (:mod:`.reading`): ``aeon:<Name>`` (the datasets shipped with aeon, official split),
  ``.ts`` files or folders of ``*_TRAIN.ts``/``*_TEST.ts``, ``.npy``/``.npz`` float arrays;
  series of unequal lengths are zero-padded into ``[N, C, T_max]`` with their lengths;
* fitted preprocessing: the number of channels, the resampling length L
  (``timeseries.length``, or the longest training series) and each channel's mean and standard
  deviation over the training steps (used by ``normalize: dataset``);
* views (:mod:`.views`): window crop, time warp, segment permutation, normalisation,
  magnitude warp, scaling and jitter, resampled to ``[B, C, L]``;
* encoder (:mod:`.encoder`): the 1-D ResNet of Wang et al. 2017 (``resnet1d``);
* evaluation input: each series' valid part resampled to L and normalised (per series by
  default, ``timeseries.normalize``), no augmentation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from simclr.config import TimeSeriesConfig
from simclr.data.items import Items, TensorItems
from simclr.errors import UserError
from simclr.modalities.base import Batch, Fitted, TensorModality, ViewGenerator
from simclr.modalities.timeseries.encoder import ResNet1d
from simclr.modalities.timeseries.reading import AEON_PREFIX, read_series, to_items
from simclr.modalities.timeseries.views import (
    Normalization,
    SeriesViews,
    channel_statistics,
    evaluation_input,
)
from simclr.models.simclr import SimCLR


class TimeSeriesModality(TensorModality):
    """Series held in memory as zero-padded ``[N, C, T]`` floats with their valid lengths.

    The fitted state, ``{"channels": C, "length": L, "mean": [C], "std": [C], "classes"}``
    (the channel statistics of the training steps, for ``normalize: dataset``), comes from
    :meth:`open` on the training data; :meth:`build_model`, :meth:`views` and
    :meth:`model_input` need the modality built with it (:meth:`with_fitted`).
    """

    name = "timeseries"
    fits_preprocessing = True
    backbones = ("resnet1d",)

    @classmethod
    def detect(cls, spec: str) -> bool:
        """Claim ``aeon:<Name>``, ``.ts`` files and folders of them, float and series arrays.

        Folders count when they hold ``*_TRAIN.ts`` or ``*_TEST.ts`` files; ``.npy`` files when
        they hold floats ``[N, T]`` or ``[N, C, T]`` (uint8 arrays are images); ``.npz`` files
        when they have a ``series`` array.
        """
        if spec.startswith(AEON_PREFIX):
            return True
        path = Path(spec).expanduser()
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".ts":
                return True
            return suffix in (".npy", ".npz") and _holds_series(path)
        return path.is_dir() and any(
            p.name.lower().endswith(("_train.ts", "_test.ts")) for p in path.iterdir()
        )

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """Read the series (see :func:`~.reading.read_series`); fit on the training data.

        Raises:
            UserError: a missing, empty or malformed input, or evaluation data whose number of
                channels differs from the fitted one.
        """
        data, fitted = self.cfg.data, self.fitted
        collection = read_series(
            spec, split, test_fraction=data.test_fraction, split_seed=data.split_seed
        )
        channels = int(collection.series[0].shape[0])
        if fitted is not None and _fitted_channels(fitted) != channels:
            raise UserError(
                f"{spec} has {channels} channel(s) but the model was trained on "
                f"{fitted['channels']}"
            )
        items = to_items(collection, classes=None if fitted is None else fitted.get("classes"))
        if fitted is None:
            mean, std = channel_statistics(items.inputs, items.lengths)
            length = fit_length(self.cfg.timeseries, items)
            fitted = {
                "channels": channels,
                "length": length,
                "mean": mean,
                "std": std,
                "classes": items.classes,  # every split numbers its labels by these
            }
        return items, dict(fitted)

    def build_model(self) -> SimCLR:
        """:class:`ResNet1d` on C channels at ``model.width`` with the configured head."""
        self.check_backbone()
        encoder = ResNet1d(_fitted_channels(self.require_fitted()), width=self.cfg.model.width)
        return self.with_head(encoder, encoder.out_dim)

    def views(self, seed: int) -> ViewGenerator:
        """:class:`SeriesViews` with the ``timeseries`` recipe, at the fitted length."""
        return SeriesViews(self.cfg.timeseries, self.length, self.normalization, seed=seed)

    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        """The valid part of each series resampled to L on the device, then normalised."""
        inputs, lengths = batch
        return evaluation_input(
            inputs.to(device, non_blocking=True),
            lengths.to(device, non_blocking=True),
            self.length,
            self.normalization,
        )

    def preprocessing(self) -> str:
        """The evaluation resampling and normalisation."""
        steps = f"{self.length} steps" if self.fitted is not None else "the fitted length"
        scaled = {
            "series": "; each channel of each series z-normalised",
            "dataset": "; each channel standardised with the training set's mean and std",
            "none": "",
        }[self.cfg.timeseries.normalize]
        return f"valid part of each series linearly resampled to {steps}{scaled}; no augmentation"

    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        """Series (one line per channel) next to two views each."""
        from simclr.modalities.timeseries.pictures import draw_series_views

        if not isinstance(dataset, TensorItems):
            raise TypeError(f"expected TensorItems, got {type(dataset).__name__}")
        views = SeriesViews(self.cfg.timeseries, self.length, self.normalization, seed=seed)
        return draw_series_views(dataset, views, out, num_items=num_items, seed=seed)

    @property
    def length(self) -> int:
        """The fitted resampling length L."""
        return int(self.require_fitted()["length"])

    @property
    def normalization(self) -> Normalization:
        """The configured normalisation, with the fitted channel statistics."""
        fitted = self.require_fitted()
        mode = self.cfg.timeseries.normalize
        if mode != "dataset":
            return Normalization(mode)
        return Normalization(mode, tuple(fitted["mean"]), tuple(fitted["std"]))


def fit_length(cfg: TimeSeriesConfig, train: TensorItems) -> int:
    """The resampling length L: ``cfg.length``, else the longest training series (capped).

    The cap is ``cfg.max_length`` when set.
    """
    if cfg.length is not None:
        return cfg.length
    longest = int(train.lengths.max())
    return longest if cfg.max_length is None else min(longest, cfg.max_length)


def _fitted_channels(fitted: Fitted) -> int:
    """The channel count of a fitted state, with a one-line error for a foreign one."""
    if not all(key in fitted for key in ("channels", "length", "mean", "std")):
        raise UserError(
            "the saved preprocessing is not a time-series one (no channels/length); "
            "was the checkpoint trained on another modality?"
        )
    return int(fitted["channels"])


def _holds_series(path: Path) -> bool:
    """Whether a ``.npy`` holds float ``[N, T]``/``[N, C, T]`` or an ``.npz`` a ``series`` array."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return False
    if isinstance(loaded, np.ndarray):
        return bool(np.issubdtype(loaded.dtype, np.floating)) and loaded.ndim in (2, 3)
    with loaded:
        return "series" in loaded.files
