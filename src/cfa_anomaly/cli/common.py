"""What the `cfa` sub-commands share: exit codes, common options, argument types and their readers."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfa_anomaly import runfiles
from cfa_anomaly.config import TRACKERS, Config, ConfigError, load_config
from cfa_anomaly.inference.spec import PredictorSpec
from cfa_anomaly.outputs import new_run_dir, prepare_output_dir

if TYPE_CHECKING:
    from cfa_anomaly.inference import Predictor

    Commands = argparse._SubParsersAction["CommandParser"]  # build_parser's add_subparsers

EXIT_OK, EXIT_CATEGORIES_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = """exit codes:
  0    done
  1    cfa benchmark / demo: some category failed or was skipped (listed on stderr; the others' results
       are written); also an unexpected error (with a traceback)
  2    a problem to fix: the message names the file, folder or key; or a wrong command line
  130  interrupted (Ctrl-C)"""
FOLDER_OPTIONS = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser. Defaults that need an optional extra (set `deferred_defaults`) are read when
    this sub-command is parsed, its --help included, not on every `cfa` command."""

    deferred_defaults: Callable[[], dict[str, Any]] | None = None

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self.deferred_defaults is not None:
            self.set_defaults(**self.deferred_defaults())
            self.deferred_defaults = None
        return super().parse_known_args(args, namespace)


def whole_number(text: str, least: int) -> int:
    """text as an int of at least `least`, or argparse's error saying so."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def add_verbosity_arguments(parser: argparse.ArgumentParser, default: int | str = logging.INFO) -> None:
    """-v / -q; on a sub-command (default SUPPRESS) they override the ones given before it."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                       default=default, help="also show debug messages")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=default, help="only warnings and errors: no progress messages or bars")


def add_data_root_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--data_root", "--data-root", dest="data_root", help=help_text)


def add_overrides_argument(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """--set SECTION.KEY=VALUE (repeatable) into args.overrides."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help=help_text)


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """--log and --log-uri: train.log and train.log_uri (tracking.py)."""
    group = parser.add_argument_group("experiment tracking")
    group.add_argument("--log", choices=TRACKERS,
                       help="also record the run in TensorBoard or MLflow (train.log; extras [tensorboard], "
                            "[mlflow])")
    group.add_argument("--log-uri", metavar="URI", help="TensorBoard's folder or MLflow's tracking URI "
                       "(train.log_uri; default <run>/tensorboard, or a SQLite store beside the runs)")


def tracking_overrides(args: argparse.Namespace) -> list[str]:
    """--log and --log-uri as config overrides."""
    given = {"train.log": args.log, "train.log_uri": args.log_uri}
    return [f"{key}={value}" for key, value in given.items() if value]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `cfa train` and main.py."""
    add_data_root_argument(parser, "folder holding <category>/")
    parser.add_argument("--category", help="category folder name (overrides data.category); with "
                        "--normal-dir: the run's name (default: the name of normal-dir's parent folder)")
    folders = parser.add_argument_group(
        "folder layout", "your own folders instead of MVTec's <root>/<category>/ (sets data.layout=folder "
        "and the data.*_dir keys; relative paths are relative to the current folder)")
    folders.add_argument("--normal-dir", help="defect-free training images")
    folders.add_argument("--abnormal-dir",
                         help="defective test images, directly or in one sub-folder per defect type")
    folders.add_argument("--normal-test-dir", help="defect-free test images (default: "
                         "data.normal_test_fraction of --normal-dir, never trained on)")
    folders.add_argument("--mask-dir", help="masks <stem>.png or <stem>_mask.png, in abnormal-dir's "
                         "sub-folders if it has them (optional: without masks, image metrics only)")
    add_overrides_argument(
        parser, "override a config value, e.g. --set model.backbone=mobilenet_v2 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a killed run from its last completed epoch (its own config is used)")
    add_tracking_arguments(parser)
    add_output_arguments(parser)
    add_report_option(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which trained model scores (`cfa test`, `cfa predict`): a checkpoint or an exported model."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint (torch)")
    source.add_argument("--model", help="an exported model: its folder or model file (ONNX, OpenVINO, "
                                        "TorchScript)")
    parser.add_argument("--device", default=PredictorSpec.device,
                        help="checkpoints: auto (GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--graph", choices=("fast", "plain"), default=PredictorSpec.graph,
                        help="checkpoints: fast (the trained precision, default) or plain (exact float32 "
                             "graph)")
    parser.add_argument("--inference-precision", choices=("float32", "bfloat16", "f32", "bf16"),
                        default=PredictorSpec.inference_precision,
                        help="exported OpenVINO models: float32 (default, equal to the checkpoint) or "
                             "bfloat16 (faster on CPUs with bf16 units, see benchmarks/README.md); f32 and "
                             "bf16, OpenVINO's names, are accepted too")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="output folder (default: a new <output_dir>/<category>/<time> "
                                         "folder)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output")


def add_report_option(parser: argparse.ArgumentParser) -> None:
    """--no-report: skip the page (report.html) that train, test, predict, benchmark and demo write."""
    parser.add_argument("--no-report", action="store_true",
                        help=f"do not write {runfiles.REPORT} (the run's page, see `cfa report`) at the end")


def add_executor_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--executor local|ray and --address (benchmark: a Ray task per cell; predict: Ray Data actors)."""
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help=f"local: in this process (default); ray: a Ray {what}, on a local Ray instance "
                             "or the cluster at --address (extra [ray], see docs/ray.md)")
    parser.add_argument("--address", metavar="ADDR",
                        help="--executor ray: a running Ray cluster (auto, or <head node>:6379; default: "
                             "$RAY_ADDRESS, else the cluster this machine runs (ray start), else a Ray "
                             "instance started on this machine for the command)")


def folder_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(--normal-dir and the other folder options as data.* overrides, the run's default name before --set).

    With --normal-dir the run is named by --category, else by a --set data.category, else after
    normal-dir's parent folder (also over a YAML's data.category: the command line wins).
    """
    given = [f"data.{key}={getattr(args, key)}" for key in FOLDER_OPTIONS if getattr(args, key)]
    if not given:
        return [], []
    if args.data_root:
        raise ConfigError("--data-root applies to the MVTec layout; with --normal-dir and the other folder "
                          "options leave it out")
    name: list[str] = []
    if args.normal_dir and not args.category:
        name = [f"data.category={Path(args.normal_dir).expanduser().resolve().parent.name or 'folder'}"]
    return ["data.layout=folder", *given], name


def config_from_args(config_path: str | None, args: argparse.Namespace) -> Config:
    """The config file (or the defaults) with the command line's folders, --set values, root and category."""
    folders, name = folder_overrides(args)
    overrides = [*name, *tracking_overrides(args), *args.overrides, *folders]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.category:
        overrides.append(f"data.category={args.category}")
    return load_config(config_path, overrides)


def output_folder(args: argparse.Namespace, base: str, category: str) -> Path:
    """--output (checked with --overwrite), else a new <base>/<category>/<time> folder."""
    if args.output:
        return prepare_output_dir(args.output, args.overwrite)
    return new_run_dir(base, category)


def predictor_spec(args: argparse.Namespace) -> PredictorSpec:
    """The model --checkpoint (with --device, --graph) or --model (with --inference-precision) names, with
    the decision overrides of `cfa predict` (--threshold, --quantile, --pixel-threshold) where given."""
    return PredictorSpec(checkpoint=args.checkpoint, model=args.model, device=args.device, graph=args.graph,
                         inference_precision=args.inference_precision,
                         threshold=getattr(args, "threshold", None), quantile=getattr(args, "quantile", None),
                         pixel_threshold=getattr(args, "pixel_threshold", None))


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """The Predictor that --checkpoint (with --device, --graph) or --model (with --inference-precision)
    names."""
    return predictor_spec(args).build()


def uses_ray(args: argparse.Namespace) -> bool:
    """Whether --executor is ray; then Ray must import (else the message says how to install it), before
    any work. --address only goes with it."""
    if args.executor == "local":
        if args.address:
            raise ConfigError("--address applies to --executor ray")
        return False
    from cfa_anomaly.distributed import require_ray

    require_ray()
    return True
