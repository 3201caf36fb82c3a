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
    from simclr.config import Config
    from simclr.data.items import Items
    from simclr.evaluate.features import Features


def add_commands(commands: Any) -> None:
    """Register the checkpoint commands on the ``simclr`` subparsers."""
    for add_command in (
        _add_knn_command,
        _add_linear_command,
        _add_finetune_command,
        _add_distill_command,
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
        "--protocol",
        choices=("sgd", "simclrv2"),
        default="sgd",
        help="sgd: SGD with momentum from the backbone, lr 0.05 x B/256 (default); simclrv2: "
        "the v2 paper's, from the first head layer, LARS, no weight decay, lr 0.005 x sqrt(B)",
    )
    finetune.add_argument(
        "--keep-projection-layers", type=int, help="head layers kept (default: the protocol's)"
    )
    finetune.add_argument("--epochs", type=positive_int, default=60, help="passes over the subset")
    finetune.add_argument("--batch-size", type=positive_int, default=256)
    finetune.add_argument(
        "--lr", type=positive_float, help="base learning rate (default: the protocol's)"
    )
    finetune.add_argument("--max-time", type=positive_float, help="seconds of training at most")
    finetune.add_argument("--seed", type=seed_int, default=0, help="subset and training seed")
    finetune.set_defaults(run=run_finetune)


def _add_distill_command(commands: Any) -> None:
    """Add ``simclr distill``: a student learns a fine-tuned teacher's predictions."""
    distill = commands.add_parser(
        "distill", help="distil a fine-tuned classifier into a student on unlabelled images"
    )
    distill.add_argument(
        "teacher", type=Path, help="classifier checkpoint written by finetune (RUN/finetune-*.pt)"
    )
    distill.add_argument("--data", required=True, help="images to distil on (labels not needed)")
    distill.add_argument("--test-data", help="labelled images to score teacher and student on")
    distill.add_argument("--out", type=Path, help="run folder (default: beside the teacher)")
    distill.add_argument("--resume", action="store_true", help="continue the run in --out")
    student = distill.add_argument_group("student (default: the teacher's network, fresh)")
    student.add_argument("--student-backbone", help="e.g. resnet18 (default: the teacher's)")
    student.add_argument("--student-width", type=positive_float, help="width multiplier")
    student.add_argument(
        "--student-from", type=Path, help="start from this pretrained checkpoint or run folder"
    )
    loss = distill.add_argument_group("loss")
    loss.add_argument("--temperature", type=positive_float, default=1.0, help="(v2: 1)")
    loss.add_argument(
        "--label-weight", type=float, default=0.0, help="weight of the labelled term (v2: 0)"
    )
    optim = distill.add_argument_group("training")
    optim.add_argument("--epochs", type=positive_int, default=10, help="passes over --data")
    optim.add_argument("--batch-size", type=positive_int, default=256)
    optim.add_argument("--optimizer", choices=("sgd", "lars"), default="sgd")
    optim.add_argument("--lr", type=positive_float, default=0.1, help="per 256 images")
    optim.add_argument("--weight-decay", type=float, default=5e-4)
    optim.add_argument("--max-time", type=positive_float, help="seconds of training at most")
    optim.add_argument("--seed", type=seed_int, default=0)
    optim.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps")
    optim.add_argument("--no-progress", action="store_true", help="no progress bar")
    distill.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    distill.add_argument("--workers", type=non_negative_int, help="loader processes")
    distill.set_defaults(run=run_distill, command="distill")


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
    """Add ``simclr export``: the encoder as safetensors, torch.export, ONNX (TorchScript)."""
    export = _checkpoint_command(
        commands, "export", "encoder as safetensors, torch.export (.pt2), ONNX"
    )
    export.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("safetensors", "pt2", "onnx", "torchscript"),  # simclr.export.EXPORT_FORMATS
        help="write this format (repeat for several; default: safetensors, pt2 = a torch.export "
        "program, onnx); torchscript only when named: torch deprecates it",
    )
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
    views.add_argument("--seed", type=seed_int, default=0)
    views.add_argument(
        "--out",
        type=Path,
        default=Path("views.png"),
        help="PNG file (text: a .txt listing), or a folder to write views.png in",
    )
    views.set_defaults(run=run_views, command="views")


def _add_plot_command(commands: Any) -> None:
    """Add ``simclr plot``: a picture of a run's loss, lr and kNN curves."""
    plot = commands.add_parser("plot", help="picture: loss, lr and kNN curves of a run")
    plot.add_argument("run_dir", type=Path)
    plot.add_argument(
        "--out", type=Path, help="PNG file, or a folder for curves.png (default RUN_DIR)"
    )
    plot.set_defaults(run=run_plot, command="plot")


def _add_map_command(commands: Any) -> None:
    """Add ``simclr map``: a 2-D map of the embeddings coloured by label."""
    map_ = _checkpoint_command(commands, "map", "picture: 2-D map of the embeddings by label")
    map_.add_argument("--data", required=True, help="data to map (any modality)")
    map_.add_argument("--split", default="test", help="train or test (digits, CIFAR)")
    map_.add_argument("--method", choices=("tsne", "umap"), default="tsne")
    map_.add_argument(
        "--max-points", type=positive_int, help="points mapped at most (PNG 5000, page 2000)"
    )
    map_.add_argument(
        "--html",
        type=Path,
        help="write the explorer page instead of the PNG: an HTML file, or a folder to write "
        "map-<method>.html in (the explorer extra)",
    )
    map_.add_argument(
        "--color",
        choices=("label", "cluster"),
        help="page: colour by class or k-means cluster when it opens (default label when "
        "labelled); a dropdown switches",
    )
    map_.add_argument("--k", type=positive_int, help="page: k-means clusters (default: classes)")
    map_.add_argument(
        "--thumbnail-px", type=positive_int, default=48, help="page: preview size (8 to 256)"
    )
    map_.set_defaults(run=run_map)


def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def seed_int(text: str) -> int:
    """Argparse type: a seed, an integer in [0, 2**63)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {text}")
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
    parser.add_argument("--workers", type=non_negative_int, help="loader processes")
    if name in OUT_HELP:
        parser.add_argument("--out", type=Path, help=OUT_HELP[name])
    parser.set_defaults(command=name)
    return parser


_JSON_OUT = "JSON file, or a folder to write the default name in (default: the run folder, "
OUT_HELP = {
    "knn": _JSON_OUT + "knn-<checkpoint>.json)",
    "linear": _JSON_OUT + "linear-<checkpoint>.json)",
    "finetune": _JSON_OUT + "finetune-<fraction>-<checkpoint>.json; the subset list beside it)",
    "cluster": _JSON_OUT + "cluster-<checkpoint>.json)",
    "embed": ".npy file (its .index.csv and .json beside it), or a folder to write "
    "embed-<checkpoint>.npy in; required",
    "export": "folder for the encoder files (default: RUN/export)",
    "map": "PNG file, or a folder to write map-<method>.png in (default: the run folder)",
}
"""``--out`` of each checkpoint command (``neighbors`` writes nothing, so has none)."""
PICTURE_VIEWS = ("image", "audio", "timeseries", "tabular")
"""Modalities whose ``simclr views`` writes a PNG (the others write a ``.txt`` listing)."""
RUN_RECORDS = ("config.yaml", "environment.json", "metrics.jsonl")
"""Files of a run folder (one holding ``checkpoints/``) that no output may replace."""


def output_path(out: Path | None, default: Path, *, suffixes: tuple[str, ...]) -> Path:
    """The file a command writes, checked by :func:`refuse_run_files`.

    ``out`` itself, ``default``'s name inside ``out`` when that is a folder, or ``default``
    without ``--out``.

    Raises:
        UserError: a suffix other than ``suffixes`` (what the command writes), or a path that
            would replace a checkpoint or a run's record.
    """
    path = default if out is None else out / default.name if out.is_dir() else out
    if path.suffix.lower() not in suffixes:
        raise UserError(
            f"--out {path}: this command writes {' or '.join(suffixes)} files; give such a "
            "file or an existing folder"
        )
    refuse_run_files(path)
    return path


def refuse_run_files(path: Path, *, folder: bool = False) -> None:
    """Fail with one line if writing ``path`` could destroy a training run.

    Refused: anything in (or named) a ``checkpoints/`` folder, an existing PyTorch checkpoint,
    a run's own records (:data:`RUN_RECORDS`), and an existing folder where a file is written
    (or an existing file where ``folder`` is written).
    """
    if "checkpoints" in (path.name, path.parent.name):
        raise UserError(f"--out {path} is in a run's checkpoints/ folder; write elsewhere")
    if path.is_file() and _is_torch_checkpoint(path):
        raise UserError(f"--out {path} is a checkpoint; it is never replaced, write elsewhere")
    if path.name in RUN_RECORDS and (path.parent / "checkpoints").is_dir():
        raise UserError(f"--out {path} is a record of the run in {path.parent}; write elsewhere")
    if not folder and path.is_dir():
        raise UserError(f"--out {path} is a folder where a file would be written")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; this command writes a folder")


def _is_torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` was written by ``torch.save`` (a zip with ``data.pkl``, not TorchScript)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        try:
            with open(path, "rb") as handle:
                return handle.read(2) == b"\x80\x02"  # the legacy (pre-zip) torch.save format
        except OSError:
            return False
    pickled = any(n.endswith("/data.pkl") for n in names)
    return pickled and not any(n.endswith("/constants.pkl") for n in names)


def _labelled_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-data", required=True, help="labelled training data")
    parser.add_argument("--test-data", required=True, help="labelled test data")


class _Context:
    """What every checkpoint command needs: the encoder, device, workers and where to write."""

    def __init__(self, args: argparse.Namespace) -> None:
        from simclr.evaluate.features import load_encoder
        from simclr.runtime import resolve_device

        self.args = args
        if getattr(args, "out", None) is not None and not args.out.is_dir():
            refuse_run_files(args.out, folder=args.command == "export")  # before any work
        self.encoder = load_encoder(args.checkpoint, random_init=args.random_init)
        self.config = self.encoder.config
        self.device = resolve_device(args.device or self.config.train.device)
        self.workers = self.config.data.num_workers if args.workers is None else args.workers
        self.modality = self.encoder.modality(self.workers)
        if args.command in ("knn", "linear", "finetune", "cluster"):
            self.json_out(args.command)  # fail on a bad --out before any work

    def default_path(self, name: str, suffix: str) -> Path:
        """``RUN/<name>-<checkpoint>[-random-init]<suffix>``: where a result goes by default."""
        from simclr.checkpoint import run_dir_of

        path = Path(self.encoder.info["path"])
        tag = "-random-init" if self.args.random_init else ""
        return run_dir_of(path) / f"{name}-{path.stem}{tag}{suffix}"

    def json_out(self, name: str) -> Path:
        """The JSON file of a result named ``name`` (see :func:`output_path`)."""
        return output_path(self.args.out, self.default_path(name, ".json"), suffixes=(".json",))

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
        from simclr.checkpoint import write_text_atomic

        result["checkpoint"] = self.encoder.info
        out = self.json_out(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
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
    from simclr.checkpoint import write_text_atomic
    from simclr.evaluate.classifier import ClassifierTraining
    from simclr.evaluate.finetune import FINETUNE_PROTOCOLS, balanced_subset, finetune, subset_names

    ctx = _Context(args)
    train_set = ctx.modality.classifier_data(args.train_data, split="train")
    test_set = ctx.modality.classifier_data(args.test_data, split="test")
    protocol = FINETUNE_PROTOCOLS[args.protocol]
    keep = args.keep_projection_layers
    training = ClassifierTraining(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=protocol.lr if args.lr is None else args.lr,
        optimizer=protocol.optimizer,
        lr_scaling=protocol.lr_scaling,
        weight_decay=protocol.weight_decay,
        seed=args.seed,
        max_time=args.max_time,
        num_workers=ctx.workers,
    )
    tag = f"finetune-{args.label_fraction:g}" + ("-scratch" if args.from_scratch else "")
    result_file = ctx.json_out(tag)
    classifier_file = _classifier_out(result_file.with_suffix(".pt"))
    listing = result_file.parent / f"{tag}-subset.txt"
    refuse_run_files(listing)
    result = finetune(
        None if args.from_scratch else ctx.encoder.model,
        ctx.config,
        train_set,
        test_set,
        fraction=args.label_fraction,
        training=training,
        keep_projection_layers=protocol.keep_projection_layers if keep is None else keep,
        from_scratch=args.from_scratch,
        device=ctx.device,
        save_to=classifier_file,
    )
    chosen = balanced_subset(train_set.labels, args.label_fraction, args.seed)
    write_text_atomic(listing, "\n".join(subset_names(train_set, chosen)) + "\n")
    result["subset_file"] = str(listing)
    result["protocol"]["name"] = args.protocol
    return ctx.emit(tag, result)


def _classifier_out(path: Path) -> Path:
    """Where a command writes a classifier checkpoint: never over a run's checkpoint.

    An earlier classifier checkpoint there (the same command's output) is replaced.
    """
    from simclr.checkpoint import load_checkpoint
    from simclr.evaluate.finetune import CLASSIFIER

    if path.is_file() and "checkpoints" not in (path.name, path.parent.name):
        try:
            if load_checkpoint(path).get("kind") == CLASSIFIER:
                return path
        except UserError:
            pass
    refuse_run_files(path)
    return path


def run_distill(args: argparse.Namespace) -> int:
    """``simclr distill``: train a student on a teacher's predictions, score both."""
    from simclr.checkpoint import LATEST, file_sha256, load_checkpoint, write_text_atomic
    from simclr.evaluate.classifier import ClassifierSaving, ClassifierTraining
    from simclr.evaluate.distill import distill
    from simclr.evaluate.finetune import classifier_record, load_classifier
    from simclr.metrics import MetricsLog, truncate_metrics
    from simclr.modalities.image import image_modality
    from simclr.run_folder import RunLock
    from simclr.runtime import resolve_device

    teacher, teacher_config, teacher_state = load_classifier(args.teacher)
    student = _Student(args, teacher_config, teacher_state)
    out = args.out or args.teacher.parent / f"distill-{args.teacher.stem}"
    refuse_run_files(out, folder=True)
    checkpoint = out / "checkpoints" / LATEST
    if checkpoint.exists() and not args.resume:
        raise UserError(
            f"{out} holds a distillation run; continue it with --resume or change --out"
        )
    workers = teacher_config.data.num_workers if args.workers is None else args.workers
    modality = image_modality(teacher_config.augment.size, num_workers=workers)
    train_set, _ = modality.open(args.data, split="train")
    test_set = (
        None if args.test_data is None else modality.classifier_data(args.test_data, split="test")
    )
    training = ClassifierTraining(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        nesterov=args.optimizer == "sgd",
        weight_decay=args.weight_decay,
        seed=args.seed,
        max_time=args.max_time,
        num_workers=workers,
    )
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    lock.acquire()
    try:
        resume = load_checkpoint(checkpoint) if args.resume and checkpoint.exists() else None
        if resume is not None:
            truncate_metrics(out, int(resume["step"]))
        record = {
            **classifier_record(student.config, teacher_state["classes"], student.keep),
            "teacher": str(args.teacher),
        }
        metrics = MetricsLog(out, purge_step=None if resume is None else int(resume["step"]) + 1)
        try:
            result = distill(
                teacher,
                student.classifier,
                train_set,  # type: ignore[arg-type]
                test_set,
                teacher_config.augment,
                training,
                temperature=args.temperature,
                label_weight=args.label_weight,
                device=resolve_device(args.device or teacher_config.train.device),
                saving=ClassifierSaving(
                    checkpoint,
                    record,
                    every=args.checkpoint_every,
                    metrics=metrics,
                    progress=not args.no_progress,
                    resume=resume,
                ),
            )
        finally:
            metrics.close()
        result["checkpoint"] = str(checkpoint)
        result["teacher_checkpoint"] = {
            "path": str(args.teacher),
            "sha256": file_sha256(args.teacher),
        }
        result["student"] = {**result.get("student", {}), **student.description}
        write_text_atomic(out / "distill.json", json.dumps(result, indent=2) + "\n")
    finally:
        lock.release()
    print(json.dumps(result))
    return 0


class _Student:
    """The student of ``simclr distill``: the teacher's network or ``--student-*``'s."""

    def __init__(self, args: argparse.Namespace, teacher: Config, state: dict[str, Any]) -> None:
        import dataclasses

        from simclr.evaluate.features import load_encoder
        from simclr.evaluate.finetune import build_classifier

        num_classes = len(state["classes"])
        changes = {
            key: value
            for key, value in (("backbone", args.student_backbone), ("width", args.student_width))
            if value is not None
        }
        if args.student_from is not None:
            if changes:
                raise UserError(
                    "--student-from brings its own network; drop --student-backbone/width"
                )
            encoder = load_encoder(args.student_from)
            self.config, self.keep = encoder.config, int(state["keep_projection_layers"])
            self.classifier = build_classifier(
                encoder.model,
                self.config,
                num_classes=num_classes,
                keep_projection_layers=self.keep,
            )
            self.description: dict[str, Any] = {"init": "pretrained", "from": encoder.info}
        else:
            changes.update(_backbone_change(args.student_backbone, args.student_width))
            model = dataclasses.replace(teacher.model, **changes)
            self.config, self.keep = dataclasses.replace(teacher, model=model), 0
            self.classifier = build_classifier(
                None, self.config, num_classes=num_classes, from_scratch=True, seed=args.seed
            )
            self.description = {"init": "random (from scratch)"}
        model_config = self.config.model
        self.description.update(
            backbone=model_config.backbone,
            width=model_config.width,
            keep_projection_layers=self.keep,
            parameters=sum(p.numel() for p in self.classifier.parameters()),
        )


def _backbone_change(backbone: str | None, width: float | None) -> dict[str, Any]:
    """The teacher's settings a student of another family of backbone cannot keep.

    ``model.width`` and ``model.stem`` apply to the built-in ResNets only, and
    ``model.backbone_args`` to timm:/tv: backbones only.
    """
    from simclr.config import EXTERNAL_BACKBONES

    if backbone is None:
        return {}
    if backbone.startswith(EXTERNAL_BACKBONES):
        if width is not None:
            raise UserError(f"--student-width applies to the built-in ResNets, not {backbone}")
        return {"width": 1.0, "stem": "imagenet"}
    return {"backbone_args": {}}


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

    if args.out is None:
        raise UserError("embed needs --out FILE.npy (or a folder)")
    ctx = _Context(args)
    if args.out.is_dir():
        out = args.out / ctx.default_path("embed", ".npy").name
    else:  # np.save's convention: a name without a suffix gets .npy
        out = args.out if args.out.suffix else args.out.with_name(args.out.name + ".npy")
    out = output_path(out, out, suffixes=(".npy",))
    stem = out.name.removesuffix(".npy")
    for sidecar in (f"{stem}.index.{args.index_format}", f"{stem}.json"):
        refuse_run_files(out.with_name(sidecar))
    result = embed(
        ctx.encoder,
        args.data,
        out,
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
    """``simclr export``: safetensors + config, .pt2 and ONNX (TorchScript on request), checked."""
    from simclr.checkpoint import run_dir_of
    from simclr.export import (
        CONFIG_FILE,
        DEFAULT_EXPORT_FORMATS,
        ONNX_FILE,
        PT2_FILE,
        TORCHSCRIPT_FILE,
        WEIGHTS_FILE,
        export_encoder,
    )

    ctx = _Context(args)
    out = args.out or run_dir_of(Path(ctx.encoder.info["path"])) / "export"
    refuse_run_files(out, folder=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, PT2_FILE, TORCHSCRIPT_FILE, ONNX_FILE):
        refuse_run_files(out / name)
    formats = tuple(dict.fromkeys(args.formats or DEFAULT_EXPORT_FORMATS))
    print(json.dumps(export_encoder(ctx.encoder, out, formats=formats)))
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
    unfitted = modality_for(cfg)
    if unfitted.name in PICTURE_VIEWS:
        out = output_path(args.out, Path("views.png"), suffixes=(".png",))
    else:  # a listing: text (and the toy modality) write <out>.txt whatever its suffix
        out = args.out / "views.txt" if args.out.is_dir() else args.out
        refuse_run_files(out)
        refuse_run_files(out.with_suffix(".txt"))
    dataset, fitted = unfitted.open(args.data, split="train")
    modality = modality_for(cfg, fitted)
    print(modality.draw_views(dataset, out, num_items=args.num_images, seed=args.seed))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """``simclr plot``: loss, learning rate and kNN over steps and time."""
    from simclr.viz import plot_run

    out = args.out and output_path(args.out, args.run_dir / "curves.png", suffixes=(".png",))
    print(plot_run(args.run_dir, out))
    return 0


def run_map(args: argparse.Namespace) -> int:
    """``simclr map``: t-SNE (or UMAP) of the embeddings, a PNG by label or the explorer page."""
    from simclr.checkpoint import run_dir_of
    from simclr.viz import draw_map

    if args.html is not None:
        if args.out is not None:
            raise UserError("give --out (the PNG) or --html (the explorer page), not both")
        return _run_explorer(args)
    if args.color is not None or args.k is not None:
        raise UserError("--color and --k colour the explorer page; add --html OUT.html")
    ctx = _Context(args)
    default = run_dir_of(Path(ctx.encoder.info["path"])) / f"map-{args.method}.png"
    out = output_path(args.out, default, suffixes=(".png",))
    features, dataset, _ = ctx.features(args.data, args.split, labelled=False)
    path = draw_map(
        features,
        out,
        class_names=dataset.classes or None,
        method=args.method,
        seed=ctx.config.train.seed,
        max_points=args.max_points or 5000,
    )
    print(path)
    return 0


def _run_explorer(args: argparse.Namespace) -> int:
    """``simclr map --html``: the explorer page (see :mod:`simclr.explorer`)."""
    from simclr.checkpoint import run_dir_of
    from simclr.errors import require
    from simclr.explorer import EXPLORER_MAX_POINTS, write_explorer

    require("plotly", "explorer", "for simclr map --html (the explorer page)")  # before any work
    html: Path = args.html
    if not html.is_dir() and html.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--html {html}: give an .html file or an existing folder")
    out = output_path(html, Path(f"map-{args.method}.html"), suffixes=(".html", ".htm"))
    ctx = _Context(args)
    checkpoint = Path(ctx.encoder.info["path"])
    weights = " (random init)" if args.random_init else ""
    features, dataset, _ = ctx.features(args.data, args.split, labelled=False)
    path = write_explorer(
        features,
        dataset,
        ctx.modality,
        out,
        method=args.method,
        seed=ctx.config.train.seed,
        max_points=args.max_points or EXPLORER_MAX_POINTS,
        color=args.color,
        k=args.k,
        thumbnail_px=args.thumbnail_px,
        title=f"embedding explorer: {run_dir_of(checkpoint).name}/{checkpoint.name}{weights}",
    )
    print(path)
    return 0
