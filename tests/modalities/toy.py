"""A modality added from outside the package: fixed-length float vectors in ``.toy.npz`` files.

Everything a modality needs, in one file and one recipe (``toy-small.yaml``), registered with
:func:`simclr.modalities.register_modality` and reached by the command line without an edit to
``src/``:

* reading: ``vectors`` float ``[N, D]`` and optional ``labels`` in a ``*.toy.npz`` file, split
  into train and test by ``data.test_fraction`` and ``data.split_seed``;
* fitted preprocessing: each feature's training mean and standard deviation, and the classes;
* views: Gaussian noise, then random feature masking (set to 0, the training mean);
* encoder: ``toy-mlp``, Linear -> BatchNorm -> ReLU twice;
* settings: ``options.toy`` (``hidden``, ``noise``, ``mask``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from simclr.config import Config
from simclr.data.items import Items, TensorItems, label_names, split_positions
from simclr.errors import UserError
from simclr.modalities.base import Batch, Fitted, SeededViews, TensorModality
from simclr.models.simclr import SimCLR

SUFFIX = ".toy.npz"
RECIPE = Path(__file__).with_name("toy-small.yaml")
DEFAULTS: dict[str, Any] = {"hidden": 32, "noise": 0.1, "mask": 0.2}


def write_toy(path: Path, n: int = 40, dim: int = 6, seed: int = 0) -> Path:
    """Two classes of vectors around opposite centres, labelled ``a`` and ``b``."""
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b"] * (n // 2))
    centres = np.where(labels[:, None] == "a", 1.0, -1.0) * np.linspace(1, 2, dim)
    vectors = (centres + 0.5 * rng.normal(size=(n, dim)) + 3.0).astype(np.float32)
    np.savez(path, vectors=vectors, labels=labels)
    return path


class ToyViews(SeededViews):
    """Two views of ``[B, D]`` vectors: noise ``N(0, noise)``, then each feature zeroed with
    probability ``mask``."""

    def __init__(self, noise: float, mask: float, seed: int = 0) -> None:
        super().__init__(seed)
        self.noise, self.mask = noise, mask

    def forward(self, vectors: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.view(vectors), self.view(vectors)

    def view(self, x: Tensor) -> Tensor:
        generator = self.generator(x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.mask
        return (x + self.noise * noise) * keep


class ToyMLP(nn.Module):
    """``[B, D] -> [B, hidden]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers(x)
        return out


class ToyModality(TensorModality):
    """Vectors held in memory as standardised ``[N, D]`` floats (``lengths`` all ``D``)."""

    name = "toy"
    backbones = ("toy-mlp",)
    fits_preprocessing = True
    recipe = RECIPE  # the default recipe when registered by an entry point

    def __init__(self, cfg: Config, fitted: Fitted | None = None) -> None:
        super().__init__(cfg, fitted)
        unknown = set(self.options) - set(DEFAULTS)
        if unknown:
            raise UserError(f"unknown option options.toy.{sorted(unknown)[0]}")
        self.settings = {**DEFAULTS, **self.options}

    @classmethod
    def detect(cls, spec: str) -> bool:
        return spec.lower().endswith(SUFFIX) and Path(spec).expanduser().is_file()

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"data path {spec} does not exist")
        with np.load(path, allow_pickle=False) as arrays:
            vectors = torch.from_numpy(np.asarray(arrays["vectors"], dtype=np.float32))
            raw = arrays["labels"].tolist() if "labels" in arrays.files else None
        data = self.cfg.data
        positions = split_positions(
            len(vectors), split, test_fraction=data.test_fraction, seed=data.split_seed
        )
        fitted = self.fitted
        if fitted is None:
            train = vectors[positions]
            classes = [] if raw is None else label_names(raw)[1]
            fitted = {
                "dim": vectors.shape[1],
                "mean": train.mean(0).tolist(),
                "std": train.std(0).clamp_min(1e-6).tolist(),
                "classes": classes,
            }
        if vectors.shape[1] != fitted["dim"]:
            raise UserError(f"{spec} has {vectors.shape[1]} features, the model {fitted['dim']}")
        mean, std = torch.tensor(fitted["mean"]), torch.tensor(fitted["std"])
        inputs = (vectors[positions] - mean) / std
        if raw is None:
            labels = torch.full((len(positions),), -1, dtype=torch.long)
        else:
            index = {name: i for i, name in enumerate(fitted["classes"])}
            labels = torch.tensor([index[str(raw[i])] for i in positions.tolist()])
        names = [f"{path.name}#{i}" for i in positions.tolist()]
        lengths = torch.full((len(inputs),), inputs.shape[1], dtype=torch.long)
        classes = fitted["classes"] if raw is not None else []
        return TensorItems(inputs, lengths, labels, classes, names), fitted

    def build_model(self) -> SimCLR:
        self.check_backbone()
        fitted = self.require_fitted()
        encoder = ToyMLP(int(fitted["dim"]), int(self.settings["hidden"]))
        return self.with_head(encoder, int(self.settings["hidden"]))

    def views(self, seed: int) -> ToyViews:
        return ToyViews(float(self.settings["noise"]), float(self.settings["mask"]), seed=seed)

    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        return batch[0].to(device)

    def preprocessing(self) -> str:
        return "each feature standardised with the training mean and std; no noise or masking"

    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        assert isinstance(dataset, TensorItems)
        rows = dataset.inputs[:num_items]
        first, second = self.views(seed)(rows, dataset.lengths[:num_items])
        lines = []
        for name, *vectors in zip(dataset.names, rows, first, second, strict=False):
            lines += [name] + [" ".join(f"{v:.2f}" for v in x.tolist()) for x in vectors]
        out = out.with_suffix(".txt")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        return out
