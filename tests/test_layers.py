"""The package's layers: every import runs downwards (docs/design.md shows the same map)."""

import ast
from pathlib import Path

import simclr

PACKAGE = Path(simclr.__file__).parent

LAYERS = [
    {
        "errors",
        "config",
        "recipes",
        "runtime",
        "clock",
        "distributed",
        "checkpoint",
        "trackers",
        "metrics",
    },
    {"run_folder"},
    {"augment"},
    {"data"},
    {"models", "losses", "optim", "health"},
    {"viz"},
    {"modalities"},
    {"evaluate"},
    {"micro_batch", "monitor", "train", "export", "explorer"},
    {"resolve"},
    {"cli_tools", "cli", "__main__", "__init__"},
]
"""Bottom to top: a module may import from its own layer and the layers below it."""


def layer_of(unit: str) -> int:
    for depth, units in enumerate(LAYERS):
        if unit in units:
            return depth
    raise AssertionError(f"simclr.{unit} is in no layer of tests/test_layers.py: place it")


def unit_of(module: str) -> str:
    """``simclr.evaluate.knn`` -> ``evaluate``; ``simclr`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def runtime_imports(tree: ast.Module) -> list[str]:
    """Modules of ``simclr`` imported anywhere in ``tree`` except under ``if TYPE_CHECKING``."""
    type_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for statement in node.body
        for child in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simclr"):
            if node.module == "simclr":  # from simclr import distributed
                found += [f"simclr.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("simclr")]
    return found


def test_no_import_runs_from_a_lower_layer_back_up():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        unit = relative.parts[0]
        depth = layer_of(unit)
        for module in runtime_imports(ast.parse(path.read_text())):
            target = unit_of(module)
            if layer_of(target) > depth:
                upward.append(f"{relative} imports {module}")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_lazy_imports():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from simclr.train import Run\n"
        "def f():\n    from simclr.train import pretrain\n"
        "from simclr import distributed\n"
    )
    assert sorted(runtime_imports(tree)) == ["simclr.distributed", "simclr.train"]
