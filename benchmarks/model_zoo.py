"""Parameter counts of the SimCLR v2 model zoo against the papers' figures.

Builds every registered zoo encoder (ResNet-50/101/152, widths 1x-4x, with and without selective
kernels) on PyTorch's meta device, so no weights are allocated (the largest has 1.4 billion
parameters), counts the encoder's parameters (no classifier, no projection head) and prints the
result as JSON, then as the markdown table of docs/benchmarks.md:

    .venv/bin/python benchmarks/model_zoo.py --out benchmarks/results/model-zoo-params.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from simclr.models import create_backbone
from simclr.models.resnet_v2 import DEPTHS, WIDTHS, zoo_name

# Encoder parameters in millions, as published: SimCLR v1 paper (Chen et al. 2020a), table 6:
# ResNet-50 1x, 2x, 4x; SimCLR v2 paper (Chen et al. 2020b), table 1 (also the table of
# checkpoints in the official README).
PAPERS: dict[str, tuple[int, str]] = {
    "resnet50-1x": (24, "v1, v2"),
    "resnet50-2x": (94, "v1, v2"),
    "resnet50-4x": (375, "v1"),
    "resnet50-1x-sk": (35, "v2"),
    "resnet50-2x-sk": (140, "v2"),
    "resnet101-1x": (43, "v2"),
    "resnet101-1x-sk": (65, "v2"),
    "resnet101-2x": (170, "v2"),
    "resnet101-2x-sk": (257, "v2"),
    "resnet152-1x": (58, "v2"),
    "resnet152-1x-sk": (89, "v2"),
    "resnet152-2x": (233, "v2"),
    "resnet152-2x-sk": (354, "v2"),
    "resnet152-3x-sk": (795, "v2"),
}


def count(name: str) -> tuple[int, int]:
    """(parameters, feature dimension) of a registered backbone, built on the meta device."""
    with torch.device("meta"):
        model, dim = create_backbone(name)
    return sum(p.numel() for p in model.parameters()), dim


def rows() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for depth in DEPTHS:
        for width in WIDTHS:
            for sk in (False, True):
                name = zoo_name(depth, width, sk)
                params, dim = count(name)
                row: dict[str, object] = {
                    "name": name,
                    "depth": depth,
                    "width": width,
                    "sk": sk,
                    "params": params,
                    "params_m": round(params / 1e6, 2),
                    "feature_dim": dim,
                }
                if name in PAPERS:
                    paper, source = PAPERS[name]
                    row["paper_m"] = paper
                    row["paper"] = source
                    row["diff_pct"] = round(100 * (params / 1e6 - paper) / paper, 2)
                out.append(row)
    return out


def markdown(table: list[dict[str, object]]) -> str:
    lines = [
        "| name | depth | width | SK | features | params (M) | paper (M) | difference |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        paper = f"{r['paper_m']} ({r['paper']})" if "paper_m" in r else ""
        diff = f"{r['diff_pct']:+.2f} %" if "diff_pct" in r else ""
        lines.append(
            f"| `{r['name']}` | {r['depth']} | {r['width']}x | {'yes' if r['sk'] else 'no'} "
            f"| {r['feature_dim']} | {r['params_m']:.2f} | {paper} | {diff} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    table = rows()
    report = {
        "what": "encoder parameters (no classifier, no projection head) of the SimCLR v2 zoo",
        "torch": torch.__version__,
        "models": table,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    print()
    print(markdown(table))


if __name__ == "__main__":
    main()
