"""The ``simclr`` command line: ``pretrain``, ``demo``, ``shards``, ``recipes`` and the rest.

The commands that read a checkpoint (``knn``, ``linear``, ``finetune``, ``cluster``, ``embed``,
``neighbors``, ``export``, ``map``) and the pictures (``views``, ``plot``) live in
:mod:`simclr.cli_tools`.

Configuration is resolved as: dataclass defaults -> ``--recipe`` -> ``--config FILE`` -> flags ->
``--set section.key=value``. A user mistake prints one line ``simclr: error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from simclr.cli_tools import add_commands, seed_int
from simclr.config import parse_assignment
from simclr.errors import UserError
from simclr.modalities import modality_names

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="simclr: %(message)s", stream=sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        result: int = args.run(args)
        return result
    except UserError as err:
        print(f"simclr: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a path the user gave that cannot be read or written
        where = f": {err.filename}" if err.filename else ""
        print(f"simclr: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    parser = _Parser(prog="simclr", description="SimCLR self-supervised pretraining.")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", parser_class=_Parser)

    pre = commands.add_parser("pretrain", help="pretrain an encoder on unlabelled data")
    pre.add_argument(
        "--data",
        help="image folder, CIFAR root, .npy/.npz file, 'digits', shards; audio folder; "
        "aeon:NAME, .ts or array of series; text CSV/JSONL/TXT; table CSV/Parquet or sklearn:NAME",
    )
    pre.add_argument(
        "--modality",
        choices=modality_names(),
        help="kind of data (default: detected from --data); a modality other than image "
        "starts from its recipe <modality>-small unless --recipe is given",
    )
    pre.add_argument("--out", type=Path, help="run folder (default: runs/<timestamp>)")
    _add_config_flags(pre)
    pre.add_argument("--eval-data", help="labelled test data: run kNN at the end")
    pre.add_argument("--eval-train-data", help="labelled kNN reference data (default: --data)")
    pre.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    pre.add_argument("--print-config", action="store_true", help="print the config and exit")
    pre.set_defaults(run=_run_pretrain, command="pretrain")

    add_commands(commands)

    demo = commands.add_parser("demo", help="pretrain on the built-in digits and compare kNN")
    demo.add_argument("--out", type=Path, help="run folder (default: runs/demo-<timestamp>)")
    demo.add_argument("--max-time", type=float, help="seconds of training (default 120)")
    demo.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    demo.set_defaults(run=_run_demo, command="demo")

    shards = commands.add_parser(
        "shards", help="pack an image folder into WebDataset tar shards for streaming"
    )
    shards.add_argument("source", type=Path, help="image folder (class subfolders or flat)")
    shards.add_argument("out", type=Path, help="empty folder for shard-*.tar and shards.json")
    shards.add_argument("--max-count", type=int, default=10_000, help="images per shard")
    shards.add_argument("--seed", type=seed_int, default=0, help="seed of the shuffled order")
    shards.set_defaults(run=_run_shards, command="shards")

    recipes = commands.add_parser("recipes", help="list the named recipes")
    recipes.set_defaults(run=_run_recipes, command="recipes")
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="named recipe: cpu-small, cifar10-resnet18, ...")
    parser.add_argument("--config", type=Path, help="YAML file of config overrides")
    flags = parser.add_argument_group("common overrides (shortcuts for --set)")
    for flag, key, kind in _FLAG_KEYS:
        help_text = _FLAG_HELP.get(flag, f"sets {key}")
        flags.add_argument(flag, dest=key.replace(".", "__"), type=kind, help=help_text)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.lr=0.5 (repeatable)",
    )


def _names(text: str) -> list[str]:
    """``--logger tensorboard,wandb`` -> ``["tensorboard", "wandb"]``; ``none`` -> ``[]``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if names == ["none"] else names


_FLAG_KEYS: list[tuple[str, str, Callable[[str], Any]]] = [
    ("--batch-size", "train.batch_size", int),
    ("--micro-batch", "train.micro_batch_size", int),
    ("--epochs", "train.epochs", int),
    ("--max-steps", "train.max_steps", int),
    ("--max-time", "train.max_time", float),
    ("--seed", "train.seed", int),
    ("--temperature", "train.temperature", float),
    ("--checkpoint-every", "train.checkpoint_every", int),
    ("--keep-checkpoints", "train.keep_checkpoints", int),
    ("--eval-every", "eval.every", str),
    ("--device", "train.device", str),
    ("--precision", "train.precision", str),
    ("--backbone", "model.backbone", str),
    ("--optimizer", "optim.name", str),
    ("--lr", "optim.lr", float),
    ("--workers", "data.num_workers", int),
    ("--logger", "train.loggers", _names),
]

_FLAG_HELP = {
    "--logger": "sets train.loggers: tensorboard (default), wandb, mlflow, comma-separated, or none"
}


def _flag_overrides(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The pretraining flags, then each ``--set``, as override layers."""
    flags: dict[str, Any] = {}
    for _, key, _ in _FLAG_KEYS:
        value = getattr(args, key.replace(".", "__"))
        if value is not None:
            section, name = key.split(".")
            flags.setdefault(section, {})[name] = value
    for section, name, value in (
        ("data", "path", args.data),
        ("data", "modality", args.modality),
        ("eval", "data", args.eval_data),
        ("eval", "train_data", args.eval_train_data),
    ):
        if value is not None:
            flags.setdefault(section, {})[name] = value
    return [flags, *(parse_assignment(text) for text in args.overrides)]


def _run_pretrain(args: argparse.Namespace) -> int:
    from simclr import distributed
    from simclr.config import to_yaml
    from simclr.resolve import resolve_config
    from simclr.trackers import check_trackers
    from simclr.train import pretrain

    if args.resume and args.out is None:
        raise UserError("--resume needs --out RUN_DIR, the run to continue")
    with distributed.process_group_from_env():
        # Rank 0 names the run folder and reads the checkpoint; the others follow it.
        if not distributed.is_main():
            logging.getLogger("simclr").setLevel(logging.WARNING)
        run_dir, state = distributed.run_on_main(partial(_run_dir_and_checkpoint, args))
        cfg = resolve_config(
            recipe=args.recipe,
            config_file=args.config,
            overrides=_flag_overrides(args),
            base=None if state is None else state["config"],
        )
        if args.print_config:
            if distributed.is_main():
                print(to_yaml(cfg), end="")
            return 0
        # a missing tracker package stops the run before its folder is touched
        distributed.run_on_main(partial(check_trackers, cfg.train.loggers))
        summary = pretrain(cfg, run_dir, resume=args.resume, state=state)
        if distributed.is_main():
            print(json.dumps({"run_dir": str(run_dir), **summary}))
    return 0


def _run_dir_and_checkpoint(args: argparse.Namespace) -> tuple[Path, dict[str, Any] | None]:
    """The run folder, and its checkpoint when ``--resume`` finds one there."""
    from simclr.checkpoint import LATEST, load_checkpoint

    run_dir = args.out or Path("runs") / time.strftime("simclr-%Y%m%d-%H%M%S")
    saved = run_dir / "checkpoints" / LATEST
    if not args.resume:
        return run_dir, None
    if not saved.exists():
        logging.getLogger("simclr").warning("no checkpoint in %s: starting from scratch", run_dir)
        return run_dir, None
    return run_dir, load_checkpoint(saved)


def _run_demo(args: argparse.Namespace) -> int:
    from simclr.resolve import resolve_config
    from simclr.train import pretrain

    overrides: dict[str, Any] = {"train": {}}
    if args.max_time is not None:
        overrides["train"]["max_time"] = args.max_time
    if args.device is not None:
        overrides["train"]["device"] = args.device
    cfg = resolve_config(recipe="digits-demo", overrides=[overrides])
    run_dir = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    print(
        f"simclr demo: pretraining {cfg.model.backbone} (width {cfg.model.width}) on the "
        f"built-in digits for {cfg.train.max_time:.0f} s, then weighted kNN on held-out digits",
        file=sys.stderr,
    )
    summary = pretrain(cfg, run_dir)
    knn = summary["knn"]
    print(f"kNN top-1, random-init encoder: {knn['random_init']['top1']:.1f}%")
    print(f"kNN top-1, SimCLR-trained encoder: {knn['trained']['top1']:.1f}%")
    print(f"run folder: {run_dir}  ({summary['steps']} steps, {summary['train_seconds']} s)")
    return 0


def _run_shards(args: argparse.Namespace) -> int:
    from simclr.data.datasets import scan_folder
    from simclr.data.shards import INDEX, write_shards

    if not args.source.is_dir():
        raise UserError(f"{args.source} is not a folder of images")
    if args.max_count < 1:
        raise UserError("--max-count must be at least 1")
    written = write_shards(
        scan_folder(args.source), args.out, max_count=args.max_count, seed=args.seed
    )
    summary = {
        "index": str(args.out / INDEX),
        "shards": len(written.urls),
        "samples": written.num_samples,
        "classes": len(written.classes),
    }
    print(json.dumps(summary))
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    from simclr.config import recipe_names, recipe_overrides

    for name in recipe_names():
        print(f"{name}: {json.dumps(recipe_overrides(name))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
