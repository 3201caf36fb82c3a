"""Extract once, score many: frozen features of every item, in dataset order, cached on disk.

Every evaluation (kNN, linear probe, clustering, embeddings) reads :class:`Features`. They are
computed with the modality's evaluation preprocessing (for images: resize, centre crop 0.875 for
large images; never augmentation), with the encoder in eval mode, and cached per checkpoint (by
its SHA-256), data, split, preprocessing and layer under the run folder's ``features/`` (or, when
that folder cannot be written, under the user cache folder, see :func:`user_cache_dir`).
Cache files are written atomically (:func:`~simclr.checkpoint.save_checkpoint`); the
temporaries a killed writer left there are removed once stale (:func:`dataset_features`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from simclr import distributed
from simclr.checkpoint import (
    WriteFailed,
    file_sha256,
    load_checkpoint,
    load_weights,
    nonfinite_tensors,
    remove_stale_temporaries,
    resolve_checkpoint,
    run_dir_of,
    save_checkpoint,
)
from simclr.config import Config, from_dict
from simclr.data.items import Items
from simclr.errors import UserError
from simclr.models.simclr import SimCLR

if TYPE_CHECKING:
    from simclr.modalities.base import Fitted, Modality

LAYERS = ("backbone", "projection")

log = logging.getLogger("simclr")


@dataclass
class Features:
    """Features of a dataset's readable items, with their labels and positions.

    Shape:
        features float32 ``[N, D]``, labels int64 ``[N]`` (-1 = unlabelled), index int64 ``[N]``.
    """

    features: Tensor
    labels: Tensor
    index: Tensor

    @property
    def has_labels(self) -> bool:
        """True when every item has a class label."""
        return len(self.labels) > 0 and bool((self.labels >= 0).all())


@dataclass
class Encoder:
    """A model read from a checkpoint, with the config it was trained with and its identity."""

    model: SimCLR
    config: Config
    info: dict[str, Any]
    """``path``, ``sha256``, ``step`` and ``weights`` (``trained`` or ``random init``)."""
    fitted: Fitted
    """The preprocessing fitted on the training data (a tokenizer...; ``{}`` for images)."""

    def modality(self, num_workers: int | None = None) -> Modality:
        """The checkpoint's modality, bound to its fitted preprocessing.

        ``num_workers`` replaces the saved number of loader processes.
        """
        from simclr.modalities import modality_for

        config = self.config
        if num_workers is not None and num_workers < 0:
            raise UserError(f"the number of loader workers must be >= 0 (got {num_workers})")
        if num_workers is not None:
            config = dataclasses.replace(
                config, data=dataclasses.replace(config.data, num_workers=num_workers)
            )
        return modality_for(config, self.fitted)


def load_encoder(checkpoint: Path | str, *, random_init: bool = False) -> Encoder:
    """Rebuild the model of a checkpoint file or run folder (weights, or fresh with its seed).

    Weights holding NaN or infinity load with a one-line warning (their scores mean nothing).

    Raises:
        UserError: not a simclr checkpoint, or weights that do not fit its model config.
    """
    from simclr.modalities import modality_for
    from simclr.modalities.image import ImageModality

    path = resolve_checkpoint(Path(checkpoint))
    state = load_checkpoint(path)
    config = from_dict(state["config"])
    if config.data.modality == "auto":  # saved before modalities existed: images only then
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, modality="image")
        )
    fitted = state.get("fitted", {})
    torch.manual_seed(config.train.seed)
    modality = modality_for(config, fitted)
    model = modality.build_model()
    if isinstance(modality, ImageModality) and config.model.in_channels is None:
        # what rebuilds the network from the config alone (fine-tuning from scratch, classifier
        # files, distillation students) needs the channel count that the fitted state holds
        model_config = dataclasses.replace(config.model, in_channels=modality.channels)
        config = dataclasses.replace(config, model=model_config)
    if not random_init:
        load_weights(model, state["model"], path)
        bad = nonfinite_tensors(state["model"].items())
        if bad:
            log.warning(
                "%s: %d weight tensor(s) hold NaN or infinity (%s): the training diverged and "
                "these results mean nothing",
                path,
                len(bad),
                ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""),
            )
    info = {
        "path": str(path),
        "sha256": file_sha256(path),
        "step": int(state["step"]),
        "weights": "random init" if random_init else "trained",
    }
    return Encoder(model.eval(), config, info, fitted)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Items,
    *,
    modality: Modality,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Features:
    """Run ``encoder`` in eval mode over ``dataset`` with ``modality``'s evaluation preprocessing.

    The encoder is put in eval mode (batch norm uses its running statistics, as lightly PR #1840
    found missing elsewhere) and restored to its previous mode afterwards.
    """
    local = _extract_share(encoder, dataset, modality, batch_size, device, (0, 1))
    if len(local.index) == 0:
        raise UserError("no readable items to extract features from")
    return local


def extract_features_across_ranks(
    encoder: nn.Module,
    dataset: Items,
    *,
    modality: Modality,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Features | None:
    """:func:`extract_features` shared by the processes of a distributed job.

    Every process embeds every K-th batch; rank 0 receives the features of the whole dataset in
    dataset order (possibly empty), the other ranks ``None``.
    """
    shard = (distributed.rank(), distributed.world_size())
    local = _extract_share(encoder, dataset, modality, batch_size, device, shard)
    features = distributed.gather_uneven_to_main(local.features)
    labels = distributed.gather_uneven_to_main(local.labels)
    index = distributed.gather_uneven_to_main(local.index)
    if features is None or labels is None or index is None:
        return None
    order = index.argsort()
    return Features(features[order], labels[order], index[order])


@torch.no_grad()
def _extract_share(
    encoder: nn.Module,
    dataset: Items,
    modality: Modality,
    batch_size: int,
    device: torch.device | str,
    shard: tuple[int, int],
) -> Features:
    """Features of every ``shard[1]``-th batch from batch ``shard[0]`` on (possibly none)."""
    was_training = encoder.training
    encoder.eval()
    features, labels, index = [], [], []
    try:
        for batch, batch_labels, batch_index in modality.eval_batches(
            dataset, batch_size=batch_size, shard=shard
        ):
            x = modality.model_input(batch, device)
            features.append(encoder(x).flatten(1).float().cpu())
            labels.append(batch_labels)
            index.append(batch_index)
        if not features:  # a rank without a batch still sends a [0, D] block
            first = next(modality.eval_batches(dataset, batch_size=1), None)
            if first is not None:
                x = modality.model_input(first[0], device)
                features.append(encoder(x).flatten(1).float().cpu()[:0])
            else:
                features.append(torch.zeros(0, 0))
            labels.append(torch.zeros(0, dtype=torch.long))
            index.append(torch.zeros(0, dtype=torch.long))
    finally:
        encoder.train(was_training)
    return Features(torch.cat(features), torch.cat(labels), torch.cat(index))


def dataset_features(
    encoder: Encoder,
    spec: str,
    *,
    split: str,
    layer: str = "backbone",
    device: torch.device | str = "cpu",
    num_workers: int = 2,
    batch_size: int = 512,
    cache: bool = True,
) -> tuple[Features, Items, dict[str, Any]]:
    """Features of the data named by ``spec`` (read by the checkpoint's modality), cached on disk.

    Args:
        encoder: From :func:`load_encoder`.
        spec: Data to embed.
        split: ``train`` or ``test`` for datasets that carry both.
        layer: ``backbone`` (h, the representation) or ``projection`` (z = g(h)).
        device: Where the encoder runs.
        num_workers: Loader processes.
        batch_size: Items per forward pass.
        cache: Read and write ``features/`` beside the checkpoint (where it cannot be written,
            the user cache folder, :func:`user_cache_dir`; where neither can, nothing). Each
            cache file is written atomically (temporary ``.KEY.pt.tmpPID``, then a rename).
            Temporaries that a killed evaluation left in both folders are deleted first, but
            only stale ones, since another evaluation may be writing there right now: untouched
            for 10 minutes with no live process ``PID`` on this machine, or untouched for a
            day (:func:`~simclr.checkpoint.remove_stale_temporaries`).

    Returns:
        ``(features, dataset, protocol)``: protocol says which features, preprocessing, data and
        checkpoint they come from.
    """
    if layer not in LAYERS:
        raise UserError(f"unknown layer {layer!r}; choose backbone or projection")
    modality = encoder.modality(num_workers)
    dataset, _ = modality.open(spec, split=split)
    protocol = {
        "features": "backbone output h" if layer == "backbone" else "projection output z",
        "modality": modality.name,
        "preprocessing": modality.preprocessing(),
        "data": spec,
        "split": split,
        "checkpoint_sha256": encoder.info["sha256"],
        "checkpoint_step": encoder.info["step"],
        "weights": encoder.info["weights"],
    }
    # The key covers what was embedded: item names and their modification times (for files).
    identity = {
        **protocol,
        "data": _absolute(spec),
        "layer": layer,
        "items": _fingerprint(dataset, _absolute(spec)),
    }
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
    places = [run_dir_of(Path(encoder.info["path"])) / "features", user_cache_dir()]
    if cache:
        for folder in places:
            for leftover in remove_stale_temporaries(folder):
                log.info("removed %s, left by an interrupted feature cache write", leftover)
        for folder in places:
            cached = _read_cached(folder / f"{key}.pt")
            if cached is not None:
                return cached, dataset, protocol
    module: nn.Module = encoder.model.backbone if layer == "backbone" else encoder.model
    module = module.to(device)
    features = extract_features(
        module, dataset, modality=modality, batch_size=batch_size, device=device
    )
    if cache:
        _write_cached(features, [folder / f"{key}.pt" for folder in places])
    return features, dataset, protocol


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/simclr/features`` (default ``~/.cache/simclr/features``).

    Where features are cached when the checkpoint's folder cannot be written (read-only
    storage, another user's run).
    """
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "simclr" / "features"


def _read_cached(path: Path) -> Features | None:
    """The features cached at ``path``; ``None`` when absent or unreadable (warned, recomputed)."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        features = Features(saved["features"], saved["labels"], saved["index"])
        if not all(isinstance(t, Tensor) for t in (features.features, features.labels)):
            raise TypeError("not tensors")
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: compute it again
        log.warning(
            "feature cache %s is unreadable (%s): computing it again", path, type(err).__name__
        )
        return None
    return features


def _write_cached(features: Features, places: list[Path]) -> None:
    """Cache ``features`` at the first of ``places`` that can be written (a note for others)."""
    tensors = {"features": features.features, "labels": features.labels, "index": features.index}
    failures = []
    for path in places:
        try:
            save_checkpoint(tensors, path)
        except WriteFailed as err:
            failures.append(f"{path.parent} ({err.reason})")
            continue
        if failures:
            log.info("cannot write %s: features cached in %s instead", failures[0], path.parent)
        return
    log.warning("features not cached: cannot write %s", " nor ".join(failures))


def _fingerprint(dataset: Items, spec_path: str) -> str:
    """A hash of the data path and item names, with sizes and modification times of real files.

    The path's own stat covers arrays and CIFAR copies, whose item names are synthetic, and the
    files directly in a folder cover items named by their row in a file (``train.csv:12``).
    """
    digest = hashlib.sha256()
    folder = Path(spec_path)
    # files directly in a data folder (train.csv, X_TEST.ts...): their items are named by row
    direct = sorted(e.path for e in os.scandir(folder) if e.is_file()) if folder.is_dir() else []
    for name in [spec_path, *direct, *dataset.names]:
        digest.update(name.encode())
        with contextlib.suppress(OSError):
            stat = os.stat(name)
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _absolute(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec
