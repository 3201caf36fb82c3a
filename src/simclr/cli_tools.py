"""Commands that use a pretrained checkpoint: evaluate, embed, export and draw.

Each command loads the encoder once, computes (or reads the cached) frozen features, and prints
one JSON line whose numbers carry their protocol and the checkpoint's identity; the same JSON is
saved in the run folder (or at ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simclr.errors import UserError
from simclr.modalities import modality_names

if TYPE_CHECKING:
    from simclr.data.items import Items
    from simclr.evaluate.features import Features


def add_commands(commands: Any) -> None:
    """Register the checkpoint commands on the ``simclr`` subparsers."""
    for add_command in (
        _add_knn_command,
        _add_linear_command,
        _add_finetune_command,
        _add_cluster_command,
        _add_embed_command,
        _add_neighbors_command,
        _add_export_command,
        _add_views_command,
        _add_plot_command,
        _add_map_command,
    ):
        add_command(commands)


def _add_knn_command(commands: Any) -> None:
    """Add ``simclr knn``: weighted kNN accuracy on labelled train/test data."""
    knn = _checkpoint_command(commands, "knn", "weighted kNN accuracy of the frozen encoder")
    _labelled_data_flags(knn)
    knn.add_argument("--k", type=positive_int, help="neighbours (default 200)")
    knn.add_argument("--temperature", type=positive_float, help="vote temperature (default 0.1)")
    knn.set_defaults(run=run_knn)


def _add_linear_command(commands: Any) -> None:
    """Add ``simclr linear``: the linear probe (logistic or the paper's SGD)."""
    linear = _checkpoint_command(commands, "linear", "linear probe on frozen features")
    _labelled_data_flags(linear)
    linear.add_argument(
        "--protocol",
        choices=("logistic", "sgd"),
        default="logistic",
        help="logistic: L-BFGS logistic regression on cached standardised features, C chosen on "
        "a validation split (default); sgd: the paper's SGD on the frozen encoder with crop+flip",
    )
    linear.add_argument("--epochs", type=positive_int, default=100, help="epochs (sgd protocol)")
    linear.add_argument("--max-time", type=positive_float, help="seconds of training (sgd)")
    linear.set_defaults(run=run_linear)


def _add_finetune_command(commands: Any) -> None:
    """Add ``simclr finetune``: fine-tuning with a fraction of the labels."""
    finetune = _checkpoint_command(commands, "finetune", "fine-tune with a fraction of the labels")
    _labelled_data_flags(finetune)
    finetune.add_argument("--label-fraction", type=float, required=True, help="e.g. 0.01, 0.1")
    finetune.add_argument("--from-scratch", action="store_true", help="same net, no pretraining")
    finetune.add_argument(
        "--keep-projection-layers", type=int, default=0, help="head layers kept (v2 uses 1)"
    )
    finetune.add_argument("--epochs", type=positive_int, default=60, help="passes over the subset")
    finetune.add_argument("--batch-size", type=positive_int, default=256)
    finetune.add_argument("--lr", type=positive_float, default=0.05, help="peak learning rate")
    finetune.add_argument("--max-time", type=positive_float, help="seconds of training at most")
    finetune.add_argument("--seed", type=int, default=0, help="subset and training seed")
    finetune.set_defaults(run=run_finetune)


def _add_cluster_command(commands: Any) -> None:
    """Add ``simclr cluster``: k-means on the embeddings."""
    cluster = _checkpoint_command(commands, "cluster", "k-means on the embeddings: NMI, ARI, acc")
    cluster.add_argument("--data", required=True, help="data to cluster (any modality)")
    cluster.add_argument("--split", default="test", help="train or test (digits, CIFAR)")
    cluster.add_argument("--k", type=positive_int, help="clusters (default: number of classes)")
    cluster.set_defaults(run=run_cluster)


def _add_embed_command(commands: Any) -> None:
    """Add ``simclr embed``: embeddings of every item to ``.npy`` plus an index."""
    embed = _checkpoint_command(commands, "embed", "embeddings of every item to .npy + index")
    embed.add_argument(
        "--data", required=True, help="data to embed (any modality; labels not needed)"
    )
    embed.add_argument("--split", default="train", help="train or test (digits, CIFAR)")
    embed.add_argument("--layer", choices=("backbone", "projection"), default="backbone")
    embed.add_argument("--index-format", choices=("csv", "parquet"), default="csv")
    embed.set_defaults(run=run_embed)


def _add_neighbors_command(commands: Any) -> None:
    """Add ``simclr neighbors``: nearest items of a query."""
    near = _checkpoint_command(commands, "neighbors", "nearest images of a query image")
    near.add_argument("--embeddings", type=Path, required=True, help=".npy written by embed")
    near.add_argument("--query", type=Path, required=True, help="query image file")
    near.add_argument("--k", type=positive_int, default=8)
    near.set_defaults(run=run_neighbors)


def _add_export_command(commands: Any) -> None:
    """Add ``simclr export``: the encoder as safetensors, TorchScript, ONNX."""
    export = _checkpoint_command(commands, "export", "encoder as safetensors, TorchScript, ONNX")
    export.set_defaults(run=run_export)


def _add_views_command(commands: Any) -> None:
    """Add ``simclr views``: a picture of augmented view pairs (text: a listing)."""
    views = commands.add_parser("views", help="picture: augmented view pairs (text: a listing)")
    views.add_argument("--data", required=True, help="data to show (any modality)")
    views.add_argument(
        "--recipe", help="recipe whose views to draw (default: cpu-small, or <modality>-small)"
    )
    views.add_argument(
        "--modality",
        choices=modality_names(),
        help="kind of data (default: detected from --data)",
    )
    views.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set augment.blur_p=0.5",
    )
    views.add_argument("--num-images", type=positive_int, default=8)
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--out", type=Path, default=Path("views.png"), help="PNG (text: .txt)")
    views.set_defaults(run=run_views, command="views")


def _add_plot_command(commands: Any) -> None:
    """Add ``simclr plot``: a picture of a run's loss, lr and kNN curves."""
    plot = commands.add_parser("plot", help="picture: loss, lr and kNN curves of a run")
    plot.add_argument("run_dir", type=Path)
    plot.add_argument("--out", type=Path, help="PNG file (default RUN_DIR/curves.png)")
    plot.set_defaults(run=run_plot, command="plot")


def _add_map_command(commands: Any) -> None:
    """Add ``simclr map``: a 2-D map of the embeddings coloured by label."""
    map_ = _checkpoint_command(commands, "map", "picture: 2-D map of the embeddings by label")
    map_.add_argument("--data", required=True, help="data to map (any modality)")
    map_.add_argument("--split", default="test", help="train or test (digits, CIFAR)")
    map_.add_argument("--method", choices=("tsne", "umap"), default="tsne")
    map_.add_argument("--max-points", type=positive_int, default=5000)
    map_.set_defaults(run=run_map)


def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """Argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _checkpoint_command(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    parser.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    parser.add_argument("--random-init", action="store_true", help="fresh weights (baseline)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--workers", type=int, help="loader processes")
    parser.add_argument("--out", type=Path, help="output file or folder")
    parser.set_defaults(command=name)
    return parser


def _labelled_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-data", required=True, help="labelled training data")
    parser.add_argument("--test-data", required=True, help="labelled test data")


class _Context:
    """What every checkpoint command needs: the encoder, device, workers and where to write."""

    def __init__(self, args: argparse.Namespace) -> None:
        from simclr.evaluate.features import load_encoder
        from simclr.runtime import resolve_device

        self.args = args
        self.encoder = load_encoder(args.checkpoint, random_init=args.random_init)
        self.config = self.encoder.config
        self.device = resolve_device(args.device or self.config.train.device)
        self.workers = self.config.data.num_workers if args.workers is None else args.workers
        self.modality = self.encoder.modality(self.workers)

    def features(
        self, spec: str, split: str, *, layer: str = "backbone", labelled: bool = True
    ) -> tuple[Features, Items, dict[str, Any]]:
        """Cached frozen features of ``spec``; labels required unless ``labelled`` is False."""
        from simclr.evaluate.features import dataset_features

        features, dataset, protocol = dataset_features(
            self.encoder,
            spec,
            split=split,
            layer=layer,
            device=self.device,
            num_workers=self.workers,
            batch_size=self.config.eval.batch_size,
        )
        if labelled and not features.has_labels:
            raise UserError(f"{spec} has no labels; this protocol needs class subfolders")
        return features, dataset, protocol

    def emit(self, name: str, result: dict[str, Any]) -> int:
        """Attach the checkpoint identity, save the JSON and print it as one line."""
        from simclr.checkpoint import run_dir_of

        result["checkpoint"] = self.encoder.info
        path = Path(self.encoder.info["path"])
        suffix = "-random-init" if self.args.random_init else ""
        out = self.args.out or run_dir_of(path) / f"{name}-{path.stem}{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return 0


def run_knn(args: argparse.Namespace) -> int:
    """``simclr knn``: weighted kNN (k=200, t=0.1 unless given) on cached features."""
    from simclr.data.datasets import require_labels
    from simclr.evaluate.knn import knn_accuracy

    ctx = _Context(args)
    train, train_set, protocol = ctx.features(args.train_data, "train", labelled=False)
    test, test_set, _ = ctx.features(args.test_data, "test", labelled=False)
    require_labels(train_set, test_set, "kNN")
    result = knn_accuracy(
        train.features,
        train.labels,
        test.features,
        test.labels,
        k=ctx.config.eval.k if args.k is None else args.k,
        temperature=ctx.config.eval.temperature if args.temperature is None else args.temperature,
    )
    result["protocol"]["preprocessing"] = protocol["preprocessing"]
    return ctx.emit("knn", result)


def run_linear(args: argparse.Namespace) -> int:
    """``simclr linear``: the linear probe on frozen features."""
    import dataclasses

    from simclr.data.datasets import require_labels
    from simclr.evaluate.linear import SGD_PROBE_TRAINING, linear_probe, linear_probe_sgd

    ctx = _Context(args)
    if args.protocol == "logistic":
        train, train_set, protocol = ctx.features(args.train_data, "train", labelled=False)
        test, test_set, _ = ctx.features(args.test_data, "test", labelled=False)
        require_labels(train_set, test_set, "a linear probe")
        result = linear_probe(train, test, seed=ctx.config.train.seed)
        result["protocol"]["features"] = protocol
        return ctx.emit("linear", result)
    train_set = ctx.modality.classifier_data(args.train_data, split="train")
    test_set = ctx.modality.classifier_data(args.test_data, split="test")
    training = dataclasses.replace(
        SGD_PROBE_TRAINING,
        epochs=args.epochs,
        seed=ctx.config.train.seed,
        max_time=args.max_time,
        num_workers=ctx.workers,
    )
    result = linear_probe_sgd(
        ctx.encoder.model.backbone,
        train_set,
        test_set,
        size=ctx.config.augment.size,
        training=training,
        device=ctx.device,
    )
    return ctx.emit("linear-sgd", result)


def run_finetune(args: argparse.Namespace) -> int:
    """``simclr finetune``: backbone + new classifier on a class-balanced label subset."""
    from simclr.evaluate.classifier import ClassifierTraining
    from simclr.evaluate.finetune import balanced_subset, finetune, subset_names

    ctx = _Context(args)
    train_set = ctx.modality.classifier_data(args.train_data, split="train")
    test_set = ctx.modality.classifier_data(args.test_data, split="test")
    training = ClassifierTraining(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_time=args.max_time,
        num_workers=ctx.workers,
    )
    result = finetune(
        None if args.from_scratch else ctx.encoder.model,
        ctx.config,
        train_set,
        test_set,
        fraction=args.label_fraction,
        training=training,
        keep_projection_layers=args.keep_projection_layers,
        from_scratch=args.from_scratch,
        device=ctx.device,
    )
    from simclr.checkpoint import run_dir_of

    tag = f"finetune-{args.label_fraction:g}" + ("-scratch" if args.from_scratch else "")
    chosen = balanced_subset(train_set.labels, args.label_fraction, args.seed)
    folder = args.out.parent if args.out else run_dir_of(Path(ctx.encoder.info["path"]))
    listing = folder / f"{tag}-subset.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(subset_names(train_set, chosen)) + "\n")
    result["subset_file"] = str(listing)
    return ctx.emit(tag, result)


def run_cluster(args: argparse.Namespace) -> int:
    """``simclr cluster``: k-means NMI, ARI and Hungarian accuracy."""
    from simclr.evaluate.cluster import cluster

    ctx = _Context(args)
    features, _, protocol = ctx.features(args.data, args.split, labelled=False)
    result = cluster(features, k=args.k, seed=ctx.config.train.seed)
    result.pop("assignment")
    result["protocol"] = {**protocol, **result["protocol"]}
    return ctx.emit("cluster", result)


def run_embed(args: argparse.Namespace) -> int:
    """``simclr embed``: write embeddings, their index and metadata."""
    from simclr.export import embed

    ctx = _Context(args)
    if args.out is None:
        raise UserError("embed needs --out FILE.npy")
    result = embed(
        ctx.encoder,
        args.data,
        args.out,
        layer=args.layer,
        split=args.split,
        index_format=args.index_format,
        device=ctx.device,
        num_workers=ctx.workers,
        batch_size=ctx.config.eval.batch_size,
    )
    print(json.dumps(result))
    return 0


def run_neighbors(args: argparse.Namespace) -> int:
    """``simclr neighbors``: print ``similarity<TAB>path`` of the nearest embedded images."""
    from simclr.export import neighbors

    ctx = _Context(args)
    for path, similarity in neighbors(
        ctx.encoder, args.query, args.embeddings, k=args.k, device=ctx.device
    ):
        print(f"{similarity:.4f}\t{path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``simclr export``: safetensors + config, TorchScript and ONNX, each checked."""
    from simclr.checkpoint import run_dir_of
    from simclr.export import export_encoder

    ctx = _Context(args)
    out = args.out or run_dir_of(Path(ctx.encoder.info["path"])) / "export"
    print(json.dumps(export_encoder(ctx.encoder, out)))
    return 0


def run_views(args: argparse.Namespace) -> int:
    """``simclr views``: draw augmented view pairs of some items (a listing for text)."""
    from simclr.config import parse_assignment
    from simclr.modalities import modality_for
    from simclr.resolve import resolve_config

    data = {"path": args.data, **({"modality": args.modality} if args.modality else {})}
    cfg = resolve_config(
        recipe=args.recipe,
        overrides=[{"data": data}, *(parse_assignment(text) for text in args.overrides)],
        image_recipe="cpu-small",  # the 32 px views rather than the ImageNet defaults' 224 px
    )
    dataset, fitted = modality_for(cfg).open(args.data, split="train")
    modality = modality_for(cfg, fitted)
    print(modality.draw_views(dataset, args.out, num_items=args.num_images, seed=args.seed))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """``simclr plot``: loss, learning rate and kNN over steps and time."""
    from simclr.viz import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def run_map(args: argparse.Namespace) -> int:
    """``simclr map``: t-SNE (or UMAP) of the embeddings, coloured by label."""
    from simclr.checkpoint import run_dir_of
    from simclr.viz import draw_map

    ctx = _Context(args)
    features, dataset, _ = ctx.features(args.data, args.split, labelled=False)
    out = args.out or run_dir_of(Path(ctx.encoder.info["path"])) / f"map-{args.method}.png"
    path = draw_map(
        features,
        out,
        class_names=dataset.classes or None,
        method=args.method,
        seed=ctx.config.train.seed,
        max_points=args.max_points,
    )
    print(path)
    return 0
