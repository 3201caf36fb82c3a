"""Use a trained encoder outside this package: embeddings, nearest images and portable model files.

* :func:`embed` writes the features of every item of a dataset (any modality) to ``X.npy``
  (float32 ``[N, D]``), with ``X.index.csv`` (or ``.parquet``) naming the item of each row and
  ``X.json`` saying how they were made (layer, preprocessing, checkpoint SHA-256).
* :func:`neighbors` embeds one more image the same way and finds its most similar rows (image
  encoders only).
* :func:`export_encoder` writes the image backbone as safetensors weights + ``config.json``
  (reload with :func:`load_exported_encoder`, no checkpoint needed), as a ``torch.export``
  program (``encoder.pt2``) and as ONNX; TorchScript (``encoder.pt``) only when asked for, since
  torch deprecates it (in torch 2.14 ``torch.jit.load`` warns "switch to torch.export").

Every file is written atomically (:func:`simclr.checkpoint.write_atomic`): a failed write
(full disk, read-only folder) is one :class:`~simclr.checkpoint.WriteFailed` line naming the
file and leaves the previous file there intact.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.checkpoint import (
    WriteFailed,
    remove_stale_temporaries,
    write_atomic,
    write_atomic_via_path,
    write_text_atomic,
)
from simclr.config import to_dict
from simclr.data.datasets import TensorImages, decode_image
from simclr.data.items import Items
from simclr.errors import UserError, first_line, require
from simclr.evaluate.features import Encoder, Features, dataset_features, extract_features
from simclr.models import create_backbone, input_channels

INDEX_FORMATS = ("csv", "parquet")
EXPORT_FORMATS = ("safetensors", "pt2", "onnx", "torchscript")
"""Every format :func:`export_encoder` writes; ``pt2`` is the ``torch.export`` program."""
DEFAULT_EXPORT_FORMATS = ("safetensors", "pt2", "onnx")
"""What ``simclr export`` writes unless told otherwise: TorchScript is deprecated in torch."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "encoder.safetensors"
PT2_FILE = "encoder.pt2"
TORCHSCRIPT_FILE = "encoder.pt"
ONNX_FILE = "encoder.onnx"
EXPORT_FORMAT_VERSION = 1

log = logging.getLogger("simclr")


def embed(
    encoder: Encoder,
    spec: str,
    out: Path,
    *,
    layer: str = "backbone",
    split: str = "train",
    index_format: str = "csv",
    device: torch.device | str = "cpu",
    num_workers: int = 2,
    batch_size: int = 512,
    cache: bool = True,
) -> dict[str, Any]:
    """Write the features of every readable item of ``spec`` to ``out`` (``.npy``).

    Items are read by the checkpoint's modality (image files, audio clips, text records, ...).
    Row ``i`` of the array is the item on row ``i`` of the index file; unreadable items are
    skipped, never given a row. Labels are optional: they are written to the index when the
    data has them.

    Args:
        encoder: From :func:`simclr.evaluate.features.load_encoder`.
        spec: Data to embed, read by the checkpoint's modality (images: see
            :func:`simclr.data.datasets.build_dataset`).
        out: The ``.npy`` file (the suffix is added when missing, as ``np.save`` does).
        layer: ``backbone`` (h, the representation) or ``projection`` (z).
        split: ``train`` or ``test`` for datasets that carry both.
        index_format: ``csv`` or ``parquet`` (needs pyarrow).
        device: Where the encoder runs.
        num_workers: Loader processes.
        batch_size: Items per forward pass.
        cache: Reuse the features cached beside the checkpoint.

    Returns:
        The metadata written to ``X.json``, with absolute paths under ``files``.

    Shape:
        the array is float32 ``[N, D]``, N = readable items.
    """
    out = _checked_embedding_path(Path(out), index_format)
    features, dataset, protocol = dataset_features(
        encoder,
        spec,
        split=split,
        layer=layer,
        device=device,
        num_workers=num_workers,
        batch_size=batch_size,
        cache=cache,
    )
    matrix = features.features.numpy().astype(np.float32, copy=False)
    columns = _index_columns(features, dataset)
    paths = _embedding_files(out, index_format)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths["metadata"].unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    write_atomic(out, lambda handle: np.save(handle, matrix))
    _write_index(paths["index"], columns, index_format)
    metadata = _embedding_metadata(
        encoder, matrix, paths, columns, index_format=index_format, layer=layer, protocol=protocol
    )
    # written last: a metadata file means the array and the index beside it are complete
    write_text_atomic(paths["metadata"], json.dumps(metadata, indent=2) + "\n")
    return {**metadata, "files": {name: str(path.resolve()) for name, path in paths.items()}}


def _checked_embedding_path(out: Path, index_format: str) -> Path:
    """The ``.npy`` path :func:`embed` writes, after failing early on a bad format or a folder."""
    if index_format not in INDEX_FORMATS:
        raise UserError(f"unknown index format {index_format!r}; choose csv or parquet")
    if index_format == "parquet":
        _optional_module("pyarrow", "to write a parquet index")  # fail before the slow part
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the .npy file to write")
    return _npy_path(out)


def _index_columns(features: Features, dataset: Items) -> dict[str, list[Any]]:
    """The index file's columns: ``row``, ``path`` and, for labelled data, ``label``, ``class``."""
    columns: dict[str, list[Any]] = {
        "row": list(range(len(features.features))),
        "path": [_absolute_if_file(dataset.names[i]) for i in features.index.tolist()],
    }
    if dataset.has_labels:
        columns["label"] = features.labels.tolist()
        columns["class"] = [dataset.classes[label] for label in columns["label"]]
    return columns


def _embedding_metadata(
    encoder: Encoder,
    matrix: np.ndarray,
    paths: dict[str, Path],
    columns: dict[str, list[Any]],
    *,
    index_format: str,
    layer: str,
    protocol: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``X.json``: file names, columns, shape and how the features were made."""
    return {
        "files": {name: path.name for name, path in paths.items()},
        "index_format": index_format,
        "columns": list(columns),
        "num_items": len(matrix),
        "dim": int(matrix.shape[1]),
        "dtype": "float32",
        "normalised": False,
        "protocol": {
            **protocol,
            "layer": layer,
            "num_items": len(matrix),
            "dim": int(matrix.shape[1]),
        },
        "checkpoint": encoder.info,
    }


def nearest_neighbors(
    embeddings: np.ndarray | Tensor, query: Tensor, k: int, *, chunk_size: int = 65536
) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``embeddings`` most cosine-similar to ``query``, most similar first.

    Rows are read ``chunk_size`` at a time, so a memory-mapped ``.npy`` larger than memory works.

    Shape:
        embeddings ``[N, D]``, query ``[D]`` or ``[M, D]`` -> indices int64 and similarities
        float32 ``[k]`` or ``[M, k]`` (``k`` capped at N).
    """
    if k < 1:
        raise UserError(f"k must be at least 1 (got {k})")
    single = query.ndim == 1
    queries = F.normalize(query.detach().float().cpu().reshape(-1, query.shape[-1]), dim=1)
    if embeddings.ndim != 2 or embeddings.shape[1] != queries.shape[1]:
        raise UserError(
            f"query has dimension {queries.shape[1]} but the embeddings are "
            f"{tuple(embeddings.shape)}"
        )
    best_sim = torch.empty(len(queries), 0)
    best_index = torch.empty(len(queries), 0, dtype=torch.long)
    for start in range(0, len(embeddings), chunk_size):
        rows = F.normalize(_rows(embeddings, start, start + chunk_size), dim=1)
        similarity = torch.cat([best_sim, queries @ rows.T], dim=1)  # (M, kept + chunk)
        positions = torch.arange(start, start + len(rows)).expand(len(queries), -1)
        index = torch.cat([best_index, positions], dim=1)
        best_sim, top = similarity.topk(min(k, similarity.shape[1]), dim=1)
        best_index = index.gather(1, top)
    return (best_index[0], best_sim[0]) if single else (best_index, best_sim)


def neighbors(
    encoder: Encoder,
    query_image: Path,
    embedded: Path,
    k: int = 8,
    *,
    device: torch.device | str = "cpu",
) -> list[tuple[str, float]]:
    """The ``k`` images of an :func:`embed` output most similar to ``query_image``.

    The query goes through the same evaluation preprocessing and layer as the embedded images,
    so an image that was embedded finds itself first with similarity 1.

    Args:
        encoder: The encoder that wrote ``embedded`` (checked by checkpoint SHA-256).
        query_image: Any image file PIL reads (at most
            :data:`~simclr.data.datasets.MAX_IMAGE_PIXELS` pixels).
        embedded: The ``.npy`` written by :func:`embed`.
        k: Number of neighbours.
        device: Where the encoder runs.

    Returns:
        ``(path, cosine similarity)`` pairs, most similar first.

    Raises:
        UserError: unreadable query, missing or inconsistent embedding files, or embeddings made
            by another checkpoint (or the same checkpoint at random init).
    """
    _require_images(encoder, "neighbors (a query image)")
    embedded = _npy_path(Path(embedded))
    metadata = read_embedding_metadata(embedded)
    made_by = metadata["protocol"]
    same = (made_by.get("checkpoint_sha256"), made_by.get("weights")) == (
        encoder.info["sha256"],
        encoder.info["weights"],
    )
    if not same:
        raise UserError(
            f"{embedded} was made by checkpoint {str(made_by.get('checkpoint_sha256'))[:12]} "
            f"({made_by.get('weights')}), not by {encoder.info['path']} "
            f"({encoder.info['sha256'][:12]}, {encoder.info['weights']}); embed again"
        )
    if not Path(query_image).is_file():
        raise UserError(f"query image {query_image} does not exist")
    try:
        pixels, note = decode_image(str(query_image))
    except Exception as err:  # noqa: BLE001 - any decoding failure (a bomb too) is one line
        raise UserError(f"cannot read query image {query_image}: {first_line(err)}") from None
    if note is not None:
        log.warning("query image %s holds %s", query_image, note)
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    channels = input_channels(encoder.model.backbone)
    if image.shape[0] != channels:
        raise UserError(
            f"query image {query_image} has {image.shape[0]} channels; the encoder takes {channels}"
        )
    query = _embed_one(encoder, image, layer=made_by["layer"], device=device)
    matrix = np.load(embedded, mmap_mode="r")
    names = _read_index_paths(embedded.with_name(metadata["files"]["index"]))
    if not len(matrix) == len(names) == metadata["num_items"]:
        raise UserError(
            f"{embedded} has {len(matrix)} rows, its index {len(names)} and its metadata says "
            f"{metadata['num_items']}: the files are out of sync; embed again"
        )
    index, similarity = nearest_neighbors(matrix, query, k)
    return [(names[i], float(s)) for i, s in zip(index.tolist(), similarity.tolist(), strict=True)]


def read_embedding_metadata(embedded: Path) -> dict[str, Any]:
    """The ``X.json`` written by :func:`embed` beside ``X.npy``."""
    embedded = _npy_path(Path(embedded))
    meta_path = _embedding_files(embedded, "csv")["metadata"]
    if not embedded.is_file():
        raise UserError(f"embeddings {embedded} do not exist")
    try:
        metadata: dict[str, Any] = json.loads(meta_path.read_text())
    except OSError:
        raise UserError(f"{embedded} has no {meta_path.name} beside it; run embed") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(metadata, dict) or "protocol" not in metadata or "files" not in metadata:
        raise UserError(f"{meta_path} is not the metadata of an embed output")
    return metadata


def export_encoder(
    encoder: Encoder, out_dir: Path, *, formats: Sequence[str] = DEFAULT_EXPORT_FORMATS
) -> dict[str, Any]:
    """Write the backbone (images -> h) in portable forms, and check each against PyTorch.

    ``config.json`` is always written: the architecture, the feature dimension and the input
    the model expects. Each format then gets its file: ``encoder.safetensors`` (weights only;
    reload with :func:`load_exported_encoder`), ``encoder.pt2`` (a ``torch.export`` program
    with a dynamic batch axis, captured in eval mode; ``torch.export.load(path).module()``),
    ``encoder.onnx`` (ONNX with a dynamic batch axis, input ``images``, output ``features``) and,
    when asked for, ``encoder.pt`` (TorchScript, ``torch.jit.load``, which warns that it is
    deprecated).

    Args:
        encoder: From :func:`simclr.evaluate.features.load_encoder`.
        out_dir: Folder to write to (created).
        formats: Any of :data:`EXPORT_FORMATS`: ``safetensors``, ``pt2``, ``onnx``,
            ``torchscript``; by default all but ``torchscript``.

    Each file is replaced atomically, so a failed write leaves the previous one intact;
    temporaries a killed export left in ``out_dir`` are removed once stale
    (:func:`~simclr.checkpoint.remove_stale_temporaries`).

    Returns:
        ``files`` (format -> path), ``max_abs_diff`` (format -> largest difference from the
        PyTorch backbone on random batches of 3 and 1 images, neither the traced batch size;
        ONNX is checked when onnxruntime is installed),
        ``feature_dim``, ``config`` (the content of ``config.json``) and ``protocol``.

    Shape:
        every exported model maps float ``[B, C, S, S]`` in [0, 1] to float ``[B, D]`` (C = 3
        for RGB; the channels of the training data otherwise, ``config.json``'s ``input``).

    Raises:
        WriteFailed: a file cannot be written (one line naming it and the reason).
        UserError: ``torch.export`` cannot capture the backbone (``pt2``; export the others).
    """
    _require_images(encoder, "export")
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown or not formats:
        raise UserError(f"unknown export format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
    if "onnx" in formats:
        _optional_module("onnx", "to export ONNX")  # fail before writing anything
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteFailed(out_dir, err, kept="nothing was written") from None
    for leftover in remove_stale_temporaries(out_dir):
        log.info("removed %s, left by an interrupted export", leftover)
    backbone = copy.deepcopy(encoder.model.backbone).cpu().float().eval()
    module = _Representation(backbone).eval()
    size = encoder.config.augment.size
    channels = input_channels(backbone)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, channels, size, size, generator=generator)
    # other batch sizes than traced: a baked-in batch size (or a lost dynamic axis) shows
    checks = [torch.rand(n, channels, size, size, generator=generator) for n in (3, 1)]
    with torch.no_grad():
        references = [module(images) for images in checks]
    config = _export_config(encoder, feature_dim=references[0].shape[1], channels=channels)
    files: dict[str, str] = {}
    diffs: dict[str, float | None] = {}
    if "safetensors" in formats:
        safetensors_torch = _optional_module("safetensors.torch", "to write safetensors")
        state = {name: t.detach().contiguous() for name, t in backbone.state_dict().items()}
        weights = safetensors_torch.save(state, metadata={"format": "simclr-encoder"})
        write_atomic(out_dir / WEIGHTS_FILE, lambda handle: handle.write(weights))
        del weights
        files["safetensors"] = WEIGHTS_FILE
        _write_config(out_dir, config, files)  # load_exported_encoder reads it
    if "safetensors" in formats:
        diffs["safetensors"] = _max_abs_diff(load_exported_encoder(out_dir), checks, references)
    if "pt2" in formats:
        config["pt2"] = _to_pt2(module, example, out_dir / PT2_FILE)
        files["pt2"] = PT2_FILE
        program = torch.export.load(out_dir / PT2_FILE).module()
        diffs["pt2"] = _max_abs_diff(program, checks, references)
    if "torchscript" in formats:
        config["torchscript"] = _to_torchscript(module, example, out_dir / TORCHSCRIPT_FILE)
        files["torchscript"] = TORCHSCRIPT_FILE
        with _torchscript_deprecation_muted():
            scripted = torch.jit.load(str(out_dir / TORCHSCRIPT_FILE))
        diffs["torchscript"] = _max_abs_diff(scripted, checks, references)
    if "onnx" in formats:
        config["onnx"] = _to_onnx(module, example, out_dir / ONNX_FILE)
        files["onnx"] = ONNX_FILE
        diffs["onnx"] = _onnx_max_abs_diff(out_dir / ONNX_FILE, checks, references)
    _write_config(out_dir, config, files)
    return {
        "out_dir": str(out_dir.resolve()),
        "files": {fmt: str((out_dir / name).resolve()) for fmt, name in files.items()},
        "max_abs_diff": diffs,
        "feature_dim": config["feature_dim"],
        "config": {**config, "files": files},
        "protocol": {
            "max_abs_diff": "largest |exported - PyTorch| over the features of batches of 3 and "
            f"1 uniform [0, 1] images of {size} px (seed 0; exported with a batch of 2), after "
            "reloading each file",
            "onnx_runtime": "onnxruntime CPUExecutionProvider (None: onnxruntime not installed)",
        },
    }


def load_exported_encoder(out_dir: Path) -> nn.Module:
    """Rebuild the backbone written by :func:`export_encoder` from ``config.json`` + safetensors.

    Needs this package (for the architecture) but no checkpoint. The module is in eval mode.

    Shape:
        float ``[B, C, S, S]`` in [0, 1] -> ``[B, feature_dim]``.
    """
    out_dir = Path(out_dir)
    try:
        config = json.loads((out_dir / CONFIG_FILE).read_text())
        arch = config["backbone"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{out_dir} has no readable {CONFIG_FILE} from export") from None
    weights = out_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{out_dir} has no {WEIGHTS_FILE}; export with the safetensors format")
    backbone, _ = create_backbone(
        arch["name"],
        width=arch["width"],
        stem=arch["stem"],
        args=arch.get("args"),
        in_channels=int(arch.get("in_channels", 3)),
    )
    safetensors_torch = _optional_module("safetensors.torch", "to read safetensors")
    try:
        backbone.load_state_dict(safetensors_torch.load_file(str(weights)))
    except RuntimeError as err:
        raise UserError(f"{weights} does not fit {arch}: {first_line(err)}") from None
    return backbone.eval()


class _Representation(nn.Module):
    """The backbone as :meth:`SimCLR.forward_features` runs it (flattened to ``[B, D]``)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        """Shape: ``[B, C, S, S]`` -> ``[B, D]``."""
        features: Tensor = self.backbone(images)
        return features.flatten(1)


def _write_config(out_dir: Path, config: dict[str, Any], files: dict[str, str]) -> None:
    """Write ``config.json`` (the config, with the files written so far) atomically."""
    write_text_atomic(
        out_dir / CONFIG_FILE, json.dumps({**config, "files": files}, indent=2) + "\n"
    )


def _export_config(encoder: Encoder, *, feature_dim: int, channels: int = 3) -> dict[str, Any]:
    model = to_dict(encoder.config)["model"]
    size = encoder.config.augment.size
    rgb = channels == 3
    return {
        "format": "simclr-encoder",
        "format_version": EXPORT_FORMAT_VERSION,
        "backbone": {
            "name": model["backbone"],
            "width": model["width"],
            "stem": model["stem"],
            "args": model["backbone_args"],
            "in_channels": channels,
        },
        "feature_dim": int(feature_dim),
        "augment_size": size,
        "model_config": model,
        "input": {
            "name": "images",
            "shape": ["batch", channels, size, size],
            "layout": "NCHW",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "channels": "RGB" if rgb else f"{channels} channels, in the order the data has them",
            "normalisation": "none: 8-bit pixel / 255, 16-bit / 65535, floats as they are; no "
            "mean or std subtraction",
            "preprocessing": f"{'RGB' if rgb else f'{channels} channels'}; when the shorter "
            f"side exceeds {size} px, resize it to "
            f"round({size} / 0.875) and centre-crop {size} x {size}; otherwise resize to "
            f"{size} x {size}; bilinear with antialiasing",
        },
        "output": {
            "name": "features",
            "shape": ["batch", int(feature_dim)],
            "meaning": "backbone representation h (before the projection head)",
        },
        "source": dict(encoder.info),
        "torch_version": torch.__version__,
    }


def _to_pt2(module: nn.Module, example: Tensor, path: Path) -> dict[str, Any]:
    """Capture ``module`` with ``torch.export`` (dynamic batch axis) and save it to ``path``.

    The program is serialised in memory first and the bytes handed to
    :func:`~simclr.checkpoint.write_atomic`: ``torch.export.save`` wants a seekable buffer (it
    warns about other file objects, and plans to refuse them), which the write-recording file
    object of ``write_atomic`` is not.
    """
    try:
        program = torch.export.export(
            module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
    except Exception as err:  # noqa: BLE001 - any capture failure is one line
        raise UserError(
            f"torch.export cannot capture this backbone ({first_line(err)}); export the other "
            "formats (simclr export --format safetensors --format onnx)"
        ) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    data = buffer.getvalue()
    del buffer
    write_atomic(path, lambda handle: handle.write(data))
    return {
        "exporter": "torch.export.export",
        "dynamic_shapes": {"images": [0]},
        "mode": "eval (batch norm uses its running statistics, no dropout)",
        "load": "torch.export.load(path).module()",
    }


def _to_torchscript(module: nn.Module, example: Tensor, path: Path) -> str:
    """Script when the backbone allows it (no shapes baked in), else trace; save to ``path``."""
    with _torchscript_deprecation_muted():
        try:
            scripted, how = torch.jit.script(module), "torch.jit.script"
        except Exception:  # noqa: BLE001 - any scripting failure means "trace instead"
            with torch.no_grad():
                scripted, how = torch.jit.trace(module, example), "torch.jit.trace (eval mode)"
        program: bytes = scripted.save_to_buffer()
    write_atomic(path, lambda handle: handle.write(program))
    return how


@contextlib.contextmanager
def _torchscript_deprecation_muted() -> Iterator[None]:
    """Silence torch's FutureWarning that TorchScript is deprecated.

    TorchScript is still what libtorch (C++) and older serving stacks load, so it stays as a
    format asked for by name (not a default one); the warning on every call would only be noise
    on the command line.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit.*deprecated", FutureWarning)
        yield


def _to_onnx(module: nn.Module, example: Tensor, path: Path) -> dict[str, Any]:
    """Export with the torch.export-based exporter; the TorchScript-based one if that fails.

    Both give the same numbers (max difference from PyTorch below 1e-6 on ResNet-18 and -50);
    the legacy exporter is 3-6x faster but deprecated and slated for removal, so it is only the
    fallback, for backbones that ``torch.export`` cannot capture or when onnxscript is missing.
    Only a failure to capture the model falls back: the file (and its ``.data``, for weights
    over 1.8 GB) is written afterwards by :func:`~simclr.checkpoint.write_atomic_via_path`, whose
    failure is a :class:`~simclr.checkpoint.WriteFailed`.
    """
    _optional_module("onnx", "to export ONNX")
    names: dict[str, Any] = {"input_names": ["images"], "output_names": ["features"]}
    program = _dynamo_onnx_program(module, example, names)
    if program is not None:
        external = _needs_external_data(module)
        write_atomic_via_path(path, lambda tmp: program.save(tmp, external_data=external))
        exporter = "torch.onnx.export(dynamo=True)"
    else:

        def legacy_export(tmp: Path) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
                torch.onnx.export(
                    module,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                    **names,
                )

        write_atomic_via_path(path, legacy_export)
        exporter = "torch.onnx.export(dynamo=False), TorchScript-based"
    return {"exporter": exporter, "dynamic_axes": {"images": [0], "features": [0]}, **names}


def _dynamo_onnx_program(
    module: nn.Module, example: Tensor, names: dict[str, Any]
) -> torch.onnx.ONNXProgram | None:
    """The torch.export-based ONNX program of ``module`` (not saved), or ``None`` (warned)."""
    try:
        _optional_module("onnxscript", "by the torch.export-based ONNX exporter")
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                **names,
            )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no ONNX program")
    except Exception as err:  # noqa: BLE001 - any capture failure: try the other exporter
        log.warning(
            "torch.export-based ONNX export failed (%s); using the legacy exporter",
            first_line(err),
        )
        return None
    return program


def _needs_external_data(module: nn.Module) -> bool:
    """ONNX files stop at 2 GB (protobuf); larger weights go to a ``.data`` file beside it."""
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return bool(size > 1_800_000_000)


def _onnx_max_abs_diff(path: Path, batches: list[Tensor], references: list[Tensor]) -> float | None:
    try:
        onnxruntime = importlib.import_module("onnxruntime")
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for images, reference in zip(batches, references, strict=True):
        (output,) = session.run(["features"], {"images": images.numpy()})
        diffs.append(float((torch.from_numpy(output) - reference).abs().max()))
    return max(diffs)


@torch.no_grad()
def _max_abs_diff(model: nn.Module, batches: list[Tensor], references: list[Tensor]) -> float:
    """Largest ``|model(x) - reference|`` over the batches (each ``[n, 3, S, S]`` -> ``[n, D]``)."""
    return max(
        float((model(images).flatten(1) - reference).abs().max())
        for images, reference in zip(batches, references, strict=True)
    )


def _embed_one(
    encoder: Encoder, image: Tensor, *, layer: str, device: torch.device | str
) -> Tensor:
    """Features of one decoded image through the same path as :func:`dataset_features`."""
    single = TensorImages(image[None], torch.tensor([-1]), [], ["query"])
    module = encoder.model.backbone if layer == "backbone" else encoder.model
    features = extract_features(
        module.to(device), single, modality=encoder.modality(num_workers=0), device=device
    )
    return features.features[0]


def _require_images(encoder: Encoder, what: str) -> None:
    """Fail with one line for an encoder of another modality than images."""
    modality = encoder.config.data.modality
    if modality not in ("image", "auto"):
        raise UserError(
            f"{what} works on image encoders; this checkpoint is {modality} "
            "(use embed, knn, linear or cluster)"
        )


def _rows(embeddings: np.ndarray | Tensor, start: int, stop: int) -> Tensor:
    if isinstance(embeddings, Tensor):
        return embeddings[start:stop].detach().float().cpu()
    return torch.from_numpy(np.array(embeddings[start:stop], dtype=np.float32))


def _npy_path(out: Path) -> Path:
    return out if out.suffix == ".npy" else out.with_name(out.name + ".npy")


def _embedding_files(out: Path, index_format: str) -> dict[str, Path]:
    stem = out.name.removesuffix(".npy")
    return {
        "embeddings": out,
        "index": out.with_name(f"{stem}.index.{index_format}"),
        "metadata": out.with_name(f"{stem}.json"),
    }


def _absolute_if_file(name: str) -> str:
    """Item files as absolute paths (usable from any folder); other names as they are."""
    return os.path.abspath(name) if os.path.isfile(name) else name


def _write_index(path: Path, columns: dict[str, list[Any]], index_format: str) -> None:
    """Write the index file atomically (a failed write keeps the previous one)."""
    if index_format == "parquet":
        pyarrow = _optional_module("pyarrow", "to write a parquet index")
        parquet = _optional_module("pyarrow.parquet", "to write a parquet index")
        table = pyarrow.table(columns)
        write_atomic_via_path(path, lambda tmp: parquet.write_table(table, str(tmp)))
        return
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    write_text_atomic(path, text.getvalue())


def _read_index_paths(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"index file {path} does not exist; embed again")
    if path.suffix == ".parquet":
        parquet = _optional_module("pyarrow.parquet", "to read a parquet index")
        paths: list[str] = parquet.read_table(str(path), columns=["path"])["path"].to_pylist()
        return paths
    with open(path, newline="", encoding="utf-8") as handle:  # as _write_index writes it
        return [row["path"] for row in csv.DictReader(handle)]


def _optional_module(name: str, purpose: str) -> ModuleType:
    return require(name, "parquet" if name.startswith("pyarrow") else "export", purpose)
