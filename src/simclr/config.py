"""Typed configuration: dataclasses hold every default, YAML and the command line overlay them.

The resolution order is: dataclass defaults -> recipe (``--recipe``) -> YAML file (``--config``)
-> command-line flags and ``--set section.key=value``. OmegaConf does the merging and the type
checking (an unknown key or a value of the wrong type is an error); the result is converted back
into these dataclasses, which the rest of the package reads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simclr.clock import parse_interval
from simclr.errors import UserError, first_line


@dataclass(frozen=True)
class DataConfig:
    """Where the training data (of any modality) comes from and how it is loaded."""

    path: str = "digits"
    """The training data, read by the modality: for images an image folder (class subfolders or
    flat), a torchvision CIFAR root, a ``.npy``/``.npz`` file of images, the built-in
    ``digits``, or WebDataset shards (their ``shards.json``, by path or URL, or its folder;
    written by ``simclr shards``); see docs/modalities.md for the others."""
    in_memory: str = "auto"
    """``auto`` decodes datasets of small images (at most 64 px) once into a uint8 tensor;
    ``always`` / ``never`` force it."""
    num_workers: int = 2
    """Loader processes that decode and crop files (unused for in-memory data)."""
    modality: str = "auto"
    """A registered modality (``image``, ``audio``, ``timeseries``, ``text``, ``tabular`` or one
    added with :func:`simclr.modalities.register_modality`); ``auto`` detects it from ``path``
    where that is unambiguous."""
    test_fraction: float = 0.2
    """Data that comes as one collection (a CSV, a table, an array) is split into ``train`` and
    ``test`` with this fraction held out ..."""
    split_seed: int = 0
    """... by a permutation drawn with this seed, the same for every command."""


@dataclass(frozen=True)
class AugmentConfig:
    """The SimCLR view recipe (Chen et al. 2020, appendix A). Defaults are the ImageNet preset."""

    size: int = 224
    progressive_from: float | None = None
    """Progressive resolution: the views start at this fraction of ``size`` (at least 8 px) and
    grow in 8 px steps to ``size``, reached at ``full_size_at`` of training (of the time budget
    under ``train.max_time``). Early steps on small views are cheap (16 px costs about a third
    of 32 px on a CPU), so a time budget sees more images; the last part of training and every
    evaluation are at ``size``. ``None``: always ``size``."""
    full_size_at: float = 0.75
    """Fraction of training from which the views are ``size`` px (with ``progressive_from``)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """Range of the crop's area as a fraction of the image's."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Range of the crop's aspect ratio, width / height."""
    crop_method: str = "torchvision"
    """How the crop box is drawn. ``torchvision``: ``RandomResizedCrop`` (area uniform in
    ``crop_scale``, log aspect ratio uniform, 10 attempts, then the central crop clipped to
    ``crop_ratio``). ``tf``: ``tf.image.sample_distorted_bounding_box`` as the official code
    calls it (aspect ratio uniform in ``crop_ratio``, height uniform over the whole pixel heights
    whose area fits ``crop_scale``, at least 10% of the image covered, 100 attempts, then the
    whole image; offsets uniform, never touching the right or bottom edge unless full size)."""
    interpolation: str = "bilinear"
    """How the crop is resized to ``size``. ``bilinear`` (torchvision's, no antialiasing on the
    device; antialiased in loader workers); ``bicubic_tf1``: TF1 ``tf.image.resize_bicubic`` of
    the official TF1 code, which trained the v1 and v2 papers' models (cubic a = -0.75, source
    coordinate ``out x in / out``, edge pixels repeated); ``bicubic_tf2``: TF2
    ``tf.image.resize(method="bicubic")`` of the official TF2 code (Keys' cubic a = -0.5,
    half-pixel centres, taps outside the crop dropped and the rest renormalised). Both bicubic
    modes use TF's kernel table (1/1024 pixel steps); their overshoot is clipped to [0, 1]
    right after the resize (TensorFlow clips it after the first colour operation, or at the
    end of its preprocessing)."""
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter_strength: float = 1.0
    """s in the paper: brightness, contrast and saturation 0.8 s, hue 0.2 s unless set below."""
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    brightness_mode: str = "multiplicative"
    """``multiplicative``: x f, f ~ U(max(0, 1 - b), 1 + b) (torchvision, and the official code
    since v2: ``impl="simclrv2"``); ``additive``: x + d, d ~ U(-b, b)
    (``tf.image.random_brightness``, the official code of the v1 paper)."""
    color_mode: str = "torchvision"
    """Contrast and saturation. ``torchvision``: blends with the mean gray level and with the
    gray image. ``tf``: ``tf.image.adjust_contrast``, (x - m) f + m with m the mean of each
    channel, and ``tf.image.adjust_saturation``, the HSV saturation scaled by f and clipped to
    [0, 1] (hue and value kept). Either way the four jitter operations run in a random order per
    view, each followed by a clip to [0, 1], as the official ``color_jitter_rand``."""
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_kernel_fraction: float = 0.1
    """Blur kernel side as a fraction of the image side (made odd)."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_padding: str = "reflect"
    """Border of the blur: ``reflect`` (torchvision) or ``zeros`` (the official code's ``SAME``
    convolution, which darkens the border)."""

    def start_size(self) -> int:
        """Side of the first views: ``size``, or ``progressive_from`` of it (at least 8 px)."""
        if self.progressive_from is None:
            return self.size
        return min(self.size, max(8, round(self.size * self.progressive_from)))

    def problems(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs that the settings of the official semantics must hold."""
        return [
            (self.crop_method in ("torchvision", "tf"), "augment.crop_method: torchvision|tf"),
            (
                self.interpolation in ("bilinear", "bicubic_tf1", "bicubic_tf2"),
                "augment.interpolation: bilinear|bicubic_tf1|bicubic_tf2",
            ),
            (
                self.brightness_mode in ("multiplicative", "additive"),
                "augment.brightness_mode: multiplicative|additive",
            ),
            (self.color_mode in ("torchvision", "tf"), "augment.color_mode: torchvision|tf"),
            (self.blur_padding in ("reflect", "zeros"), "augment.blur_padding: reflect|zeros"),
        ]

    def jitter_amounts(self) -> tuple[float, float, float, float]:
        """(brightness, contrast, saturation, hue) after applying the strength rule."""
        s = self.jitter_strength
        return (
            0.8 * s if self.brightness is None else self.brightness,
            0.8 * s if self.contrast is None else self.contrast,
            0.8 * s if self.saturation is None else self.saturation,
            0.2 * s if self.hue is None else self.hue,
        )


LOGGERS = ("tensorboard", "wandb", "mlflow")
"""The trackers ``train.loggers`` may name (:mod:`simclr.trackers`)."""

EXTERNAL_BACKBONES = ("timm:", "tv:")
"""Prefixes of ``model.backbone`` names built by another library: ``timm:NAME`` (any timm model)
and ``tv:NAME`` (a torchvision classification model), see :mod:`simclr.models.external`."""


@dataclass(frozen=True)
class ModelConfig:
    """Encoder f and projection head g."""

    backbone: str = "resnet50"
    """A built-in ResNet (``resnet18``..., ``resnet50-2x``...), ``timm:NAME`` (needs timm) or
    ``tv:NAME`` (a torchvision classification model), e.g. ``timm:vit_small_patch16_224``,
    ``tv:efficientnet_b0``; their classifier is removed, h is the pooled feature."""
    width: float = 1.0
    """Channel multiplier of the ResNet (0.25 gives widths 16/32/64/128 on ResNet-18); built-in
    ResNets only: must stay 1 for ``timm:``/``tv:`` backbones."""
    stem: str = "imagenet"
    """``imagenet`` (7x7 stride-2 conv + max-pool) or ``cifar`` (3x3 stride-1 conv, no pool);
    built-in ResNets only: must stay ``imagenet`` for ``timm:``/``tv:`` backbones."""
    in_channels: int | None = None
    """Channels of the images the encoder's first convolution takes. ``None``: as many as the
    training images have (3 for RGB, grey and photographs; C for multi-channel TIFFs and arrays),
    recorded in the checkpoint (its fitted preprocessing) so that evaluation and export rebuild
    the same encoder. Set it for data that is not opened before the model is built (shards,
    datasets given to :func:`simclr.train.pretrain`); data with another count is an error.
    ``timm:`` backbones get it as ``in_chans``; a ``tv:`` model gets its first convolution
    rebuilt for it."""
    backbone_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a ``timm:``/``tv:`` model's constructor, e.g. ``img_size: 32`` for a
    timm ViT (torchvision's: ``image_size``) trained at another size than 224 px, or
    ``drop_path_rate: 0.1``; empty for the built-in ResNets."""
    head: str = "v1"
    """``v1``: 2 layers with ReLU (the v1 paper); ``v1-bn``: the same with batch norm on both
    layers (the official v1 code); ``v2``: 3 layers with batch norm on every layer."""
    head_hidden_dim: int | None = None
    """Hidden width of the head; ``None`` uses the backbone's feature dimension."""
    head_out_dim: int = 128
    channels_last: bool = True
    zero_init_residual: bool | None = None
    """Start the last batch norm of every residual block with gamma = 0, as the official
    ResNet does; ``None``: the backbone family's default (on for the v2 zoo's
    ``resnet50-2x``..., off for torchvision's ``resnet18/34/50``). Built-in ResNets only (a
    ``tv:`` ResNet takes ``backbone_args.zero_init_residual``, a timm one ``zero_init_last``)."""

    def problems(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs: the ResNet-only settings are left alone for others."""
        prefix = next((p for p in EXTERNAL_BACKBONES if self.backbone.startswith(p)), None)
        if prefix is None:
            return [
                (
                    not self.backbone_args,
                    f"model.backbone_args is for timm:/tv: backbones, not {self.backbone}",
                )
            ]
        name, fix = self.backbone, "(the model fixes its own architecture)"
        return [
            (
                len(name) > len(prefix) and ":" not in name[len(prefix) :],
                f"model.backbone {name!r}: give a model name after {prefix!r}, e.g. "
                + ("timm:vit_small_patch16_224" if prefix == "timm:" else "tv:resnet50"),
            ),
            (
                self.width == 1,
                f"model.width applies to the built-in ResNets, not {name}: set model.width=1 "
                f"(not {self.width:g}) {fix}",
            ),
            (
                self.stem == "imagenet",
                f"model.stem applies to the built-in ResNets, not {name}: set "
                f"model.stem=imagenet (not {self.stem}) {fix}",
            ),
            (
                self.zero_init_residual is None,
                f"model.zero_init_residual applies to the built-in ResNets, not {name}: leave it "
                "null (tv: ResNets take model.backbone_args.zero_init_residual, timm ones "
                "zero_init_last)",
            ),
        ]


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "lars"
    """``lars``, ``sgd``, ``adam`` or ``adamw``."""
    lr: float = 0.3
    """Base learning rate, scaled by ``lr_scaling``."""
    lr_scaling: str = "linear"
    """``linear``: lr x batch/256; ``sqrt``: lr x sqrt(batch) (the paper uses 0.075); ``none``."""
    weight_decay: float = 1e-6
    momentum: float = 0.9
    nesterov: bool = False
    """Nesterov momentum for ``sgd`` and ``lars`` (the official code's linear evaluation uses it
    with SGD)."""
    trust_coefficient: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    """Linear warmup length; never more than a tenth of the run."""
    min_lr_fraction: float = 0.0
    """The cosine decays to this fraction of the peak learning rate."""


@dataclass(frozen=True)
class TrainConfig:
    """The pretraining loop: budgets, precision, logging and checkpoints."""

    batch_size: int = 4096
    """The global batch: under DDP each of K processes takes batch_size / K images."""
    micro_batch_size: int | None = None
    """Items per micro-batch (``--micro-batch``; 0 or ``None``: off): the step is still taken on
    the whole batch, every view against the 2B - 2 negatives of the whole batch, but activations
    are held for one view of ``micro_batch_size`` items at a time (gradient caching, one more
    forward pass; :mod:`simclr.micro_batch`). Batch norm then normalises each view of each
    micro-batch on its own (ghost batches of that size). Must divide ``batch_size / K``."""
    temperature: float = 0.1
    objective: str = "official"
    """What the gradient is taken of: ``official``, the official code's ``loss_a + loss_b``
    (twice NT-Xent's mean over the 2N anchors), so that the paper recipes' learning rates and
    weight decay mean what they mean there; ``mean``, the mean itself (half that gradient; the
    convention of most PyTorch ports, kept by the recipes tuned with it). The logged loss is
    always the mean."""
    epochs: int = 100
    max_steps: int | None = None
    max_time: float | None = None
    """Seconds of training; the schedule then spans the budget, from the measured step time."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``..."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA with bf16 support, fp32 elsewhere), ``bf16``, ``fp16``,
    ``fp32``."""
    compile: bool = False
    """Run the model through ``torch.compile``. Off by default: on the CPU benchmarked it gave
    no gain for a 55 s compile (docs/benchmarks.md); try it on GPUs."""
    sync_batchnorm: bool = True
    """Under DDP, normalise with the statistics of the global batch (the paper's global BN);
    no effect in a single process."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 0
    """Periodic snapshots kept besides ``latest.pt`` (``--keep-checkpoints``): each checkpoint
    is also kept as ``checkpoints/step-<step>.pt`` and the oldest beyond this many are removed;
    0 keeps none."""
    log_every: int = 10
    progress: bool = True
    loggers: tuple[str, ...] = ("tensorboard",)
    """Where the logged numbers, the config and the final kNN go besides ``metrics.jsonl``
    (``--logger tensorboard,wandb,mlflow``): any of :data:`LOGGERS`, empty (``--logger none``)
    for ``metrics.jsonl`` alone. W&B and MLflow need the ``trackers`` extra; see
    :mod:`simclr.trackers` for their projects, stores and environment variables."""


@dataclass(frozen=True)
class EvalConfig:
    """Weighted kNN evaluation (Wu et al. 2018), as used by lightly and InstDisc."""

    data: str | None = None
    """Labelled test data; when set, ``pretrain`` runs kNN on it at the end."""
    train_data: str | None = None
    """Labelled reference data for kNN; ``None`` uses the training data."""
    k: int = 200
    temperature: float = 0.1
    batch_size: int = 512
    every: str | None = None
    """Evaluate while pretraining (``--eval-every``): every N steps (``"500"``) or every stretch
    of training time (``"90s"``, ``"5m"``, ``"1h"``). kNN on a fixed subset of ``data`` (and of
    the reference data), logged as ``knn_top1``; the best is kept as ``checkpoints/best.pt``.
    The evaluation's time is left out of ``train.max_time``. Needs ``data``."""
    every_reference: int = 5000
    """Reference items of the periodic kNN (a fixed random subset; all when fewer)."""
    every_test: int = 2000
    """Test items of the periodic kNN (a fixed random subset; all when fewer)."""


@dataclass(frozen=True)
class AudioConfig:
    """Speech and sound: reading, batched waveform and spectrogram views, log-mel features."""

    sample_rate: int = 16000
    """Every file is resampled to this rate (Hz)."""
    max_seconds: float = 30.0
    """Longer files are cut to their first ``max_seconds`` when read (clips are kept in memory
    as one tensor padded to the longest)."""
    crop_seconds: float = 1.0
    """Length of each view (a random crop; shorter clips are zero-padded) and of the evaluation
    input (the centre of the clip)."""
    n_mels: int = 64
    window_ms: float = 25.0
    hop_ms: float = 10.0
    gain_db: tuple[float, float] = (-6.0, 6.0)
    noise_p: float = 0.8
    noise_snr_db: tuple[float, float] = (5.0, 40.0)
    shift_fraction: float = 0.1
    """Largest circular time shift, as a fraction of the crop."""
    time_masks: int = 2
    time_mask_fraction: float = 0.1
    """Widest time mask, as a fraction of the frames."""
    freq_masks: int = 2
    freq_mask_fraction: float = 0.15
    """Widest frequency mask, as a fraction of the mel bands."""

    def problems(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs that must hold."""
        return [
            (self.sample_rate >= 1000, "audio.sample_rate must be at least 1000 Hz"),
            (self.crop_seconds > 0, "audio.crop_seconds must be > 0"),
            (self.max_seconds > 0, "audio.max_seconds must be > 0"),
            (self.n_mels >= 4, "audio.n_mels must be at least 4"),
            (0 < self.hop_ms <= self.window_ms, "audio.hop_ms must be in (0, window_ms]"),
            (0 <= self.noise_p <= 1, "audio.noise_p must be a probability"),
            (self.gain_db[0] <= self.gain_db[1], "audio.gain_db must be lo <= hi"),
            (self.noise_snr_db[0] <= self.noise_snr_db[1], "audio.noise_snr_db must be lo <= hi"),
            (0 <= self.shift_fraction <= 1, "audio.shift_fraction must be in [0, 1]"),
            (min(self.time_masks, self.freq_masks) >= 0, "audio masks must be >= 0"),
            (0 <= self.time_mask_fraction <= 1, "audio.time_mask_fraction must be in [0, 1]"),
            (0 <= self.freq_mask_fraction <= 1, "audio.freq_mask_fraction must be in [0, 1]"),
        ]


@dataclass(frozen=True)
class TimeSeriesConfig:
    """Univariate and multivariate series: resampling, normalisation and the view recipe."""

    length: int | None = None
    """Every series (its valid part) is resampled to this many steps; ``None``: the longest
    training series, at most ``max_length``."""
    max_length: int | None = None
    """Cap of the length fitted when ``length`` is ``None`` (long series cost time)."""
    normalize: str = "series"
    """``series``: z-normalise each channel of each series (the UCR convention); ``dataset``:
    standardise each channel with its mean and standard deviation over the training set (keeps
    the level of each channel, which carries the class in data such as JapaneseVowels);
    ``none``."""
    jitter_sigma: float = 0.03
    """Standard deviation of the additive noise (the views are z-normalised first)."""
    scaling_sigma: float = 0.1
    """Each channel is multiplied by a factor drawn from N(1, scaling_sigma)."""
    magnitude_warp_sigma: float = 0.2
    """... and by a smooth curve through knots drawn from N(1, magnitude_warp_sigma)."""
    time_warp_sigma: float = 0.2
    """Time runs at a smooth speed through knots drawn from N(1, time_warp_sigma)."""
    warp_knots: int = 4
    """Inner knots of the warping curves (two more sit at the ends)."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Window crop: fraction of the series kept, resampled back to ``length``."""
    permute_p: float = 0.5
    """Probability of cutting a view into 2 to ``permute_max_segments`` segments and
    concatenating them in a random order."""
    permute_max_segments: int = 5

    def problems(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs that must hold."""
        return [
            (self.length is None or self.length >= 4, "timeseries.length must be at least 4"),
            (
                self.max_length is None or self.max_length >= 4,
                "timeseries.max_length must be at least 4",
            ),
            (
                self.normalize in ("series", "dataset", "none"),
                "timeseries.normalize: series|dataset|none",
            ),
            (
                min(self.jitter_sigma, self.scaling_sigma, self.magnitude_warp_sigma) >= 0,
                "timeseries sigmas must be >= 0",
            ),
            (self.time_warp_sigma >= 0, "timeseries.time_warp_sigma must be >= 0"),
            (self.warp_knots >= 1, "timeseries.warp_knots must be at least 1"),
            (
                0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                "timeseries.crop_scale must be 0 < lo <= hi <= 1",
            ),
            (0 <= self.permute_p <= 1, "timeseries.permute_p must be a probability"),
            (self.permute_max_segments >= 1, "timeseries.permute_max_segments must be >= 1"),
        ]


@dataclass(frozen=True)
class TextConfig:
    """Text corpora: columns, tokenizer, token-level views and the Transformer's size."""

    text_columns: tuple[str, ...] = ()
    """CSV/JSONL fields joined into the text; empty: every string field but the label."""
    label_column: str | None = None
    """Field holding the class; ``None``: ``label`` when present (else unlabelled)."""
    lowercase: bool = True
    """Lower-case (and NFKC-normalise) the text before tokenising: a small corpus then spends
    its vocabulary on words rather than on capitalised variants of them."""
    vocab_size: int = 8000
    """Byte-level BPE vocabulary trained on the training corpus (it may come out smaller: the
    merges stop when no pair occurs twice)."""
    max_length: int = 128
    """Tokens kept per item (the start of the text)."""
    dim: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1
    """Encoder dropout: SimCSE's noise, different for the two views of a text because the
    masks are drawn per row of the training batch, which holds both views."""
    word_dropout: float = 0.3
    """Probability that each token is dropped (short texts need strong views: at 0.1 the
    contrastive task was solved without learning topics; see recipes/text-small.yaml)."""
    span_deletion: float = 0.2
    """Largest fraction of the tokens removed as one contiguous span."""
    shuffle_window: int = 3
    """Tokens move at most this far in the local shuffle (0: no shuffle)."""

    def problems(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs that must hold."""
        return [
            (self.vocab_size >= 300, "text.vocab_size must be at least 300 (256 bytes + specials)"),
            (self.max_length >= 4, "text.max_length must be at least 4"),
            (self.dim >= 8 and self.dim % self.heads == 0, "text.dim must be a multiple of heads"),
            (self.layers >= 1 and self.heads >= 1, "text.layers and text.heads must be >= 1"),
            (0 <= self.dropout < 1, "text.dropout must be in [0, 1)"),
            (0 <= self.word_dropout < 1, "text.word_dropout must be in [0, 1)"),
            (0 <= self.span_deletion < 1, "text.span_deletion must be in [0, 1)"),
            (self.shuffle_window >= 0, "text.shuffle_window must be >= 0"),
        ]


@dataclass(frozen=True)
class TabularConfig:
    """Tables: the label column, column kinds, SCARF corruption and the MLP's size."""

    label_column: str | None = None
    """Column holding the class; ``None``: ``target``, ``label`` or ``class`` when present."""
    max_categories: int = 100
    """A column of strings with at most this many distinct values in the training data is
    categorical; one with more (identifiers, free text) is left out with a warning."""
    corruption: float = 0.6
    """SCARF: fraction of each row's features replaced by draws from their marginals."""
    hidden_dim: int = 256
    """Width of every layer of the MLP encoder (and its feature dimension)."""
    layers: int = 4
    """Linear layers of the MLP encoder, each followed by (batch norm and) ReLU."""
    batch_norm: bool = True
    dropout: float = 0.0
    embedding_dim: int = 8
    """A categorical column enters the MLP as a learned vector of at most this many numbers
    (``min(embedding_dim, categories + 1)``; the extra code is "unknown or missing")."""

    def problems(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs that must hold."""
        return [
            (self.max_categories >= 1, "tabular.max_categories must be at least 1"),
            (0 <= self.corruption < 1, "tabular.corruption must be in [0, 1)"),
            (self.hidden_dim >= 1, "tabular.hidden_dim must be at least 1"),
            (self.layers >= 1, "tabular.layers must be at least 1"),
            (0 <= self.dropout < 1, "tabular.dropout must be in [0, 1)"),
            (self.embedding_dim >= 1, "tabular.embedding_dim must be at least 1"),
        ]


@dataclass(frozen=True)
class Config:
    """Everything a run needs; saved in the run folder and inside each checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    timeseries: TimeSeriesConfig = field(default_factory=TimeSeriesConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tabular: TabularConfig = field(default_factory=TabularConfig)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Settings of modalities registered from outside the package, by modality name
    (``--set options.<name>.<key>=value``); the built-in modalities have the typed sections
    above."""


_RECIPE_FILES: dict[str, Path] = {}
"""Recipes registered from outside the package (:func:`register_recipe_file`), by name."""


def _shipped_recipes() -> list[str]:
    """Names of the YAML files in ``simclr/recipes``, sorted."""
    folder = resources.files("simclr.recipes")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def register_recipe_file(path: str | Path) -> str:
    """Make the YAML file at ``path`` a named recipe; its name is the file's stem.

    Raises:
        ValueError: the name is a shipped recipe's or another file's, or the file is missing.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"recipe file {path} does not exist")
    name = path.stem
    if name in _shipped_recipes() or _RECIPE_FILES.get(name, path) != path:
        raise ValueError(f"a recipe named {name!r} exists already; rename {path}")
    _RECIPE_FILES[name] = path
    return name


def recipe_names() -> tuple[str, ...]:
    """Every named recipe: the ones shipped in ``simclr/recipes``, then the registered files."""
    return (*_shipped_recipes(), *_RECIPE_FILES)


def recipe_overrides(name: str) -> dict[str, Any]:
    """The YAML overrides of a named recipe (shipped or registered)."""
    if name in _RECIPE_FILES:
        return read_yaml(_RECIPE_FILES[name])
    if name not in _shipped_recipes():
        raise UserError(f"unknown recipe {name!r}; choose from {', '.join(recipe_names())}")
    text = resources.files("simclr.recipes").joinpath(f"{name}.yaml").read_text()
    loaded = yaml.safe_load(text) or {}
    assert isinstance(loaded, dict)
    return loaded


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {first_line(err)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, not a list or value")
    return loaded


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``section.key=value`` into a nested dict; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def build_config(*layers: dict[str, Any]) -> Config:
    """Merge override layers (first to last) onto the defaults and validate the result."""
    merged = OmegaConf.structured(Config)
    _unlock(merged)
    try:
        for layer in layers:
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(f"invalid configuration: {first_line(err)}") from None
    assert isinstance(config, Config)
    validate(config)
    return config


def _unlock(node: DictConfig) -> None:
    """Make a structured config from frozen dataclasses mergeable.

    OmegaConf 2.3 marks every section read-only itself (2.4 only the root), so the flag is
    cleared section by section.
    """
    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _unlock(child)


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict of primitives (tuples become lists), safe for YAML, JSON and torch.save."""
    plain: dict[str, Any] = _plain(dataclasses.asdict(config))
    return plain


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved by :func:`to_dict` (for example from a checkpoint)."""
    return build_config(values)


def to_yaml(config: Config) -> str:
    """The resolved configuration as YAML, diffable and reusable with ``--config``."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def validate(config: Config) -> None:
    """Reject values that would fail later or silently train nonsense.

    ``data.modality`` is checked where modalities are registered
    (:func:`simclr.modalities.resolve_modality`).
    """
    t, o, m, a = config.train, config.optim, config.model, config.augment
    checks = [
        (t.batch_size >= 2, f"train.batch_size must be at least 2 (got {t.batch_size})"),
        (t.temperature > 0, f"train.temperature must be > 0 (got {t.temperature})"),
        (t.objective in ("official", "mean"), "train.objective must be official or mean"),
        (t.epochs >= 1, f"train.epochs must be at least 1 (got {t.epochs})"),
        (t.max_steps is None or t.max_steps >= 1, "train.max_steps must be at least 1"),
        (
            t.max_time is None or 0 < t.max_time < math.inf,
            f"train.max_time must be a finite number of seconds > 0 (got {t.max_time})",
        ),
        (0 <= t.seed < 2**63, f"train.seed must be in [0, 2**63) (got {t.seed})"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (t.log_every >= 1, "train.log_every must be at least 1"),
        (t.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision: auto|bf16|fp16|fp32"),
        (o.name in ("lars", "sgd", "adam", "adamw"), "optim.name must be lars, sgd, adam or adamw"),
        (o.lr > 0, f"optim.lr must be > 0 (got {o.lr})"),
        (o.lr_scaling in ("linear", "sqrt", "none"), "optim.lr_scaling: linear|sqrt|none"),
        (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
        (m.width > 0, f"model.width must be > 0 (got {m.width})"),
        (m.stem in ("imagenet", "cifar"), "model.stem must be imagenet or cifar"),
        (m.in_channels is None or m.in_channels >= 1, "model.in_channels must be at least 1"),
        (m.head in ("v1", "v1-bn", "v2"), "model.head must be v1, v1-bn or v2"),
        (a.size >= 8, f"augment.size must be at least 8 px (got {a.size})"),
        (
            a.progressive_from is None or 0 < a.progressive_from <= 1,
            f"augment.progressive_from must be in (0, 1] (got {a.progressive_from})",
        ),
        (
            0 < a.full_size_at <= 1,
            f"augment.full_size_at must be in (0, 1] (got {a.full_size_at})",
        ),
        (
            0 < a.crop_scale[0] <= a.crop_scale[1] <= 1,
            "augment.crop_scale must be 0 < lo <= hi <= 1",
        ),
        (0 < a.crop_ratio[0] <= a.crop_ratio[1], "augment.crop_ratio must be 0 < lo <= hi"),
        (0 < a.blur_sigma[0] <= a.blur_sigma[1], "augment.blur_sigma must be 0 < lo <= hi"),
        (a.jitter_strength >= 0, "augment.jitter_strength must be >= 0"),
        (min(a.jitter_amounts()) >= 0, "augment brightness/contrast/saturation/hue must be >= 0"),
        (a.jitter_amounts()[3] <= 0.5, "augment hue (0.2 x jitter_strength) must be <= 0.5"),
        (0 < a.blur_kernel_fraction <= 1, "augment.blur_kernel_fraction must be in (0, 1]"),
        (0 <= o.momentum < 1, "optim.momentum must be in [0, 1)"),
        (all(0 <= b < 1 for b in o.betas), "optim.betas must be in [0, 1)"),
        (o.trust_coefficient > 0, "optim.trust_coefficient must be > 0"),
        (0 <= o.min_lr_fraction <= 1, "optim.min_lr_fraction must be in [0, 1]"),
        (m.head_out_dim >= 1, "model.head_out_dim must be at least 1"),
        (m.head_hidden_dim is None or m.head_hidden_dim >= 1, "model.head_hidden_dim must be >= 1"),
        (config.eval.batch_size >= 1, "eval.batch_size must be at least 1"),
        (config.eval.k >= 1, "eval.k must be at least 1"),
        (config.eval.temperature > 0, "eval.temperature must be > 0"),
        (config.eval.every_reference >= 1, "eval.every_reference must be at least 1"),
        (config.eval.every_test >= 1, "eval.every_test must be at least 1"),
        (
            config.eval.every is None or config.eval.data is not None,
            "eval.every (--eval-every) needs eval.data (--eval-data), the labelled data to score",
        ),
        (t.keep_checkpoints >= 0, "train.keep_checkpoints must be >= 0"),
        (config.data.in_memory in ("auto", "always", "never"), "data.in_memory: auto|always|never"),
        (config.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (0 < config.data.test_fraction < 1, "data.test_fraction must be in (0, 1)"),
        (
            0 <= config.data.split_seed < 2**63,
            f"data.split_seed must be in [0, 2**63) (got {config.data.split_seed})",
        ),
    ]
    for section in (config.audio, config.timeseries, config.text, config.tabular):
        checks += section.problems()
    checks += a.problems()
    checks += m.problems()
    for p_name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
        p = getattr(a, p_name)
        checks.append((0 <= p <= 1, f"augment.{p_name} must be a probability (got {p})"))
    checks.append(_loggers_check(t.loggers))
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if config.eval.every is not None:
        parse_interval(config.eval.every, "eval.every (--eval-every)")


def _loggers_check(names: tuple[str, ...]) -> tuple[bool, str]:
    """(condition, message) for ``train.loggers``: known names, each once."""
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        return False, (
            f"unknown logger {unknown[0]!r} in train.loggers (--logger); choose from "
            f"{', '.join(LOGGERS)}, comma-separated, or none"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    return not repeated, f"train.loggers names {', '.join(repeated)} more than once"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
