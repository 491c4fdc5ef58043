"""The `cfa` command: train, test, predict, export, serve, benchmark, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfa_anomaly import __version__, runfiles
from cfa_anomaly.config import MVTEC_CATEGORIES, Config, ConfigError, load_config
from cfa_anomaly.console import configure_logging
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.errors import CfaError
from cfa_anomaly.outputs import OutputExistsError, new_run_dir, prepare_output_dir

if TYPE_CHECKING:
    from cfa_anomaly.inference.spec import PredictorSpec
    from cfa_anomaly.predict import PredictOptions, PredictSummary

DEMO_CATEGORY = "synthetic"
EXIT_OK, EXIT_CATEGORIES_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = """exit codes:
  0    done
  1    cfa benchmark / demo: some category failed or was skipped (listed on stderr; the others' results
       are written); also an unexpected error (with a traceback)
  2    a problem to fix: the message names the file, folder or key; or a wrong command line
  130  interrupted (Ctrl-C)"""
log = logging.getLogger("cfa_anomaly.cli")  # not __name__: "__main__" under python -m cfa_anomaly.cli


def add_verbosity_arguments(parser: argparse.ArgumentParser, default: int | str = logging.INFO) -> None:
    """-v / -q; on a sub-command (default SUPPRESS) they override the ones given before it."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                       default=default, help="also show debug messages")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=default, help="only warnings and errors: no progress messages or bars")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `cfa train` and main.py."""
    parser.add_argument("--data_root", "--data-root", dest="data_root", help="folder holding <category>/")
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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set model.backbone=mobilenet_v2 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a killed run from its last completed epoch (its own config is used)")
    add_output_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which trained model scores (`cfa test`, `cfa predict`): a checkpoint or an exported model."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint (torch)")
    source.add_argument("--model", help="an exported model: its folder or model file (ONNX, OpenVINO, "
                                        "TorchScript)")
    parser.add_argument("--device", default="auto", help="checkpoints: auto (GPU when there is one), cpu, "
                                                         "cuda or cuda:N")
    parser.add_argument("--graph", choices=("fast", "plain"), default="fast",
                        help="checkpoints: fast (the trained precision, default) or plain (exact float32 "
                             "graph)")
    parser.add_argument("--inference-precision", choices=("f32", "bf16"), default="f32",
                        help="exported OpenVINO models: f32 (default, equal to the checkpoint) or bf16 "
                             "(faster on CPUs with bf16 units, see benchmarks/README.md)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="output folder (default: a new <output_dir>/<category>/<time> "
                                         "folder)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output")


FOLDER_OPTIONS = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


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
    folders, name = folder_overrides(args)
    overrides = [*name, *args.overrides, *folders]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.category:
        overrides.append(f"data.category={args.category}")
    return load_config(config_path, overrides)


def output_folder(args: argparse.Namespace, base: str, category: str) -> Path:
    if args.output:
        return prepare_output_dir(args.output, args.overwrite)
    return new_run_dir(base, category)


def run_training(cfg: Config, args: argparse.Namespace, run_test: bool = True) -> Path:
    from cfa_anomaly.pipeline import check_data, print_report, train_and_test

    split = check_data(cfg, run_test)  # a missing or broken dataset fails before an output folder is made
    output = output_folder(args, cfg.output_dir, cfg.data.category)
    source = (f"{cfg.data.normal_dir} (folder layout)" if cfg.data.layout == "folder"
              else Path(cfg.data.root) / cfg.data.category)
    log.info("training CFA (%s) on %s; output: %s", cfg.model.backbone, source, output)
    report = train_and_test(cfg, output, run_test=run_test, split=split)
    if run_test:
        print_report(report, output)
    else:
        print(f"checkpoint written to {output / 'checkpoint.pt'}")
    return output


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        resume_training(args)
        return
    run_training(config_from_args(args.config, args), args, run_test=not args.no_test)


def resume_training(args: argparse.Namespace) -> None:
    """Continue a killed run in its own folder, from its last completed epoch, with its saved config."""
    from cfa_anomaly.config import config_from_dict
    from cfa_anomaly.pipeline import TRAIN_STATE_NAME, print_report, train_and_test
    from cfa_anomaly.train import read_training_state

    folder = Path(args.resume)
    state = read_training_state(folder / TRAIN_STATE_NAME)
    cfg = config_from_dict(state["config"])
    log.info("resuming %s after epoch %s of %s", folder, state["epoch"], cfg.train.epochs)
    report = train_and_test(cfg, folder, run_test=not args.no_test, resume=state)
    if not args.no_test:
        print_report(report, folder)


def cmd_test(args: argparse.Namespace) -> None:
    from cfa_anomaly.pipeline import evaluate_predictor, print_report

    predictor = predictor_from_args(args)
    if args.output:
        output = Path(args.output)
    elif args.checkpoint:
        output = Path(args.checkpoint).parent / "test"
    else:
        raise OutputExistsError("--output is needed with --model: results are not written into a model "
                                "folder")
    output = prepare_output_dir(output, args.overwrite)
    source = args.checkpoint or args.model
    print_report(evaluate_predictor(predictor, output, data_root=args.data_root, source=source), output)


def predictor_spec(args: argparse.Namespace) -> PredictorSpec:
    """The model --checkpoint (with --device, --graph) or --model (with --inference-precision) names, with
    the decision overrides of `cfa predict` (--threshold, --quantile, --pixel-threshold) where given."""
    from cfa_anomaly.inference.spec import PredictorSpec

    return PredictorSpec(checkpoint=args.checkpoint, model=args.model, device=args.device, graph=args.graph,
                         inference_precision=args.inference_precision,
                         threshold=getattr(args, "threshold", None), quantile=getattr(args, "quantile", None),
                         pixel_threshold=getattr(args, "pixel_threshold", None))


def predictor_from_args(args: argparse.Namespace):
    """The Predictor that --checkpoint (with --device, --graph) or --model (with --inference-precision)
    names."""
    return predictor_spec(args).build()


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """The streaming options of `cfa predict` (formats, maps, panels, strict, recursive)."""
    from cfa_anomaly.predict import PredictOptions

    formats = ("csv", "jsonl") if args.format == "both" else (args.format,)
    return PredictOptions(formats=formats, maps=args.maps, panels=args.panels, strict=args.strict,
                          recursive=args.recursive, read_workers=args.read_workers)


def print_predict_summary(summary: PredictSummary, output: Path, engine: str) -> None:
    """One line of results on stdout; the unreadable files, if any, in a warning."""
    flagged = f", {summary.flagged} flagged defective" if summary.scored else ""
    print(f"scored {summary.scored} of {summary.images} images{flagged} with {engine} "
          f"({summary.images_per_second:.1f} images/s scoring); written to {output}: "
          + ", ".join(p.relative_to(output).as_posix() for p in summary.score_files)
          + (f", {len(summary.map_files)} map file(s)" if summary.map_files else "")
          + (f", {summary.panels} panel(s) in panels/" if summary.panels else ""))
    if summary.skipped:
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in summary.skipped[:20])
        more = f"\n  ... and {len(summary.skipped) - 20} more" if len(summary.skipped) > 20 else ""
        log.warning("skipped %d unreadable file(s) (rows with an error in the scores file):\n  %s%s",
                    len(summary.skipped), listing, more)


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


def cmd_predict(args: argparse.Namespace) -> None:
    ray = uses_ray(args)
    options = predict_options(args)
    spec = predictor_spec(args)
    predictor = spec.build()  # also with --executor ray: a model that cannot load fails here, before Ray
    output = prepare_output_dir(args.output, args.overwrite)
    if ray:
        from cfa_anomaly.distributed.predict import RayPredictSettings, predict_images_ray

        settings = RayPredictSettings(address=args.address, actors=args.actors,
                                      cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor)
        summary = predict_images_ray(spec, predictor, args.inputs, output, options, settings)
        engine = f"{predictor.name} in {summary.workers} Ray actor(s)"
    else:
        from cfa_anomaly.predict import predict_images

        summary = predict_images(predictor, args.inputs, output, options)
        engine = predictor.name
    print_predict_summary(summary, output, engine)
    print(f"geometry: {predictor.card.geometry}; decisions: {predictor.thresholds.image_source}")
    if summary.images and not summary.scored:
        raise DatasetError(f"none of the {summary.images} input file(s) could be read; see {output}")


def cmd_export(args: argparse.Namespace) -> None:
    from cfa_anomaly.inference.export import export_checkpoint

    card = export_checkpoint(Path(args.checkpoint), args.format, Path(args.output), overwrite=args.overwrite)
    print(f"exported {args.checkpoint} as {args.format} to {args.output} (metadata: {card})")
    print(f"run it with: cfa predict --model {args.output} --output <folder> <images or folders>")


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model once, then answer HTTP requests until interrupted (see docs/deployment.md, "HTTP service")."""
    try:
        from cfa_anomaly.serve import ServeSettings, describe_model, run_server
    except ImportError as err:
        raise ConfigError("cfa serve needs FastAPI and uvicorn: pip install 'cfa-anomaly[serve]' "
                          f"({err})") from err

    settings = ServeSettings(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                             timeout_s=args.timeout_s, max_batch=args.max_batch, max_files=args.max_files)
    predictor = predictor_from_args(args)
    info = describe_model(args.checkpoint or args.model, predictor,
                          "checkpoint" if args.checkpoint else "export")
    run_server(predictor, settings, info, host=args.host, port=args.port, access_log=not args.no_access_log)


# The demo's generated categories: 48 normal images, half of them held out so that its thresholds rest on
# 24 normal images (a new good part exceeds the image threshold with probability 1/25), and 20 good test
# images so that its false-alarm share can be read.
DEMO_COUNTS = {"n_train": 48, "n_test_good": 20, "n_test_per_defect": 3}


def demo_overrides(extra: Sequence[str]) -> list[str]:
    """The embedded default: an offline ImageNet backbone and the paper's training settings."""
    return ["model.backbone=mobilenet_v2", "train.epochs=30", "data.holdout_fraction=0.5", *extra]


def report_problems(summary: dict[str, Any], requested: int, noun: str = "categories") -> int:
    """Name the categories (or grid cells) without results (failed or skipped) in one line on stderr; the
    exit code of the run. Their reasons are not repeated: the benchmark logged each one when it happened, and
    results.md lists them under "Not included"."""
    problems = summary["problems"]
    if not problems:
        return EXIT_OK
    status = summary.get("status", {})
    listing = ", ".join(f"{cell} ({status.get(cell, 'failed')})" for cell in problems)
    log.error("%d of %d %s have no results: %s; the reasons are above and in results.md",
              len(problems), requested, noun, listing)
    return EXIT_CATEGORIES_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from cfa_anomaly.benchmark import run_benchmark
    from cfa_anomaly.data.synthetic import generate_dataset

    output = output_folder(args, "runs", "demo")
    data_root = output / "data"
    seed = load_config(None, demo_overrides(args.overrides)).train.seed  # validate before generating anything
    categories = [f"{DEMO_CATEGORY}_{kind}" for kind in args.kinds]
    for kind, category in zip(args.kinds, categories):
        log.info("generating a synthetic %s dataset in %s", kind, data_root / category)
        generate_dataset(data_root, category=category, kind=kind, seed=seed, **DEMO_COUNTS)
    summary = run_benchmark(data_root, output, categories, demo_overrides(args.overrides), config_dir=None)
    print((output / runfiles.RESULTS).read_text().split("'-' is a category")[0].rstrip() + "\n")
    print(f"results, panels, GIFs and plots in {output} (tables: {output / runfiles.RESULTS})")
    return report_problems(summary, len(categories))


def benchmark_executor(args: argparse.Namespace):
    """The executor --executor names: this process (local) or Ray tasks (ray, with --address and the
    per-task resources)."""
    if not uses_ray(args):
        return None
    from cfa_anomaly.distributed.grid import RayExecutor

    return RayExecutor(address=args.address, cpus_per_task=args.cpus_per_task,
                       gpus_per_task=args.gpus_per_task)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from cfa_anomaly.benchmark import CONFIG_DIR, run_benchmark

    config_dir = Path(args.config_dir) if args.config_dir else (CONFIG_DIR if CONFIG_DIR.is_dir() else None)
    output = Path(args.output)
    summary = run_benchmark(args.root, output, args.categories, args.overrides, config_dir, force=args.force,
                            backbones=args.backbones or (), seeds=args.seeds or (),
                            grid=args.grid or (), executor=benchmark_executor(args),
                            select_by_validation=args.select_by == "validation")
    noun = "categories" if len(summary["status"]) == len(args.categories) else "cells"
    done = [c for c, s in summary["status"].items() if s in ("done", "reused")]
    print(f"\n{len(done)} of {len(summary['status'])} {noun} in {output / runfiles.RESULTS} and {runfiles.RESULTS_CSV}")
    return report_problems(summary, len(summary["status"]), noun)


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


def add_executor_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--executor local|ray and --address (benchmark: a Ray task per cell; predict: Ray Data actors)."""
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help=f"local: in this process (default); ray: a Ray {what}, on a local Ray instance "
                             "or the cluster at --address (extra [ray], see docs/ray.md)")
    parser.add_argument("--address", metavar="ADDR",
                        help="--executor ray: a running Ray cluster (auto, or <head node>:6379; default: "
                             "$RAY_ADDRESS, else the cluster this machine runs (ray start), else a Ray "
                             "instance started on this machine for the command)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfa", description="CFA anomaly detection and localization",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbosity_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train",
                                help="train on <root>/<category>/train/good (or --normal-dir), then test")
    train.add_argument("--config", help="YAML config (e.g. configs/anomaly/unsupervised/cfa/bottle.yaml)")
    train.add_argument("--no-test", action="store_true", help="train and save the checkpoint only")
    add_config_arguments(train)
    train.set_defaults(func=cmd_train)

    test = commands.add_parser("test", help="evaluate a checkpoint or an exported model on its category's "
                                            "test split")
    add_model_arguments(test)
    test.add_argument("--data_root", "--data-root", dest="data_root",
                      help="override the data root (MVTec layout; a folder-layout model tests on its own "
                           "folders)")
    add_output_arguments(test)
    test.set_defaults(func=cmd_test)

    pred = commands.add_parser("predict", help="score images: anomaly scores and maps out")
    add_model_arguments(pred)
    pred.add_argument("inputs", nargs="+",
                      help="image files, folders, .txt files listing image paths (one per line), or .csv / "
                           ".jsonl manifests with a path column")
    pred.add_argument("--output", required=True)
    pred.add_argument("--overwrite", action="store_true")
    decide = pred.add_mutually_exclusive_group()
    decide.add_argument("--threshold", type=float,
                        help="decide with this image-score threshold instead of the held-out one the model "
                             "stores")
    decide.add_argument("--quantile", type=float, metavar="Q",
                        help="decide at this quantile (0..1] of the held-out normal images' scores the model "
                             "stores (default: the training's evaluation.threshold_quantile, 0.99)")
    pred.add_argument("--pixel-threshold", type=float, metavar="X",
                      help="outline (and mask) pixels from this map value instead of the stored pixel "
                           "threshold")
    pred.add_argument("--recursive", action="store_true", help="search folders' sub-folders for images too")
    pred.add_argument("--format", choices=("csv", "jsonl", "both"), default="csv",
                      help="score rows as scores.csv (default), scores.jsonl or both")
    pred.add_argument("--maps", choices=("npz", "none"), default="npz",
                      help="npz (default): maps.npz, or maps/shard-NNNNN.npz of 256 maps each for more "
                           "images")
    pred.add_argument("--panels", choices=("all", "defects", "none"),
                      help="picture per image: all, only those decided defective, or none (default: all for "
                           "up to 200 images, else defects)")
    pred.add_argument("--strict", action="store_true",
                      help="stop at the first unreadable file (default: list it in the scores file and skip "
                           "it)")
    pred.add_argument("--read-workers", type=non_negative_int, default=0, metavar="N",
                      help="threads that read and resize the next batches while the model scores (default "
                           "0: each batch in line); for slow or network disks and GPUs, where the CPU would "
                           "wait")
    add_executor_arguments(pred, "Data pipeline (parallel decoding, model actors)")
    pred.add_argument("--actors", type=positive_int, metavar="N",
                      help="--executor ray: model replicas, each loading the model once (default: one per "
                           "GPU where the cluster has GPUs, else one per --cpus-per-actor CPUs less one CPU "
                           "for decoding)")
    pred.add_argument("--cpus-per-actor", type=positive_int, default=1, metavar="N",
                      help="--executor ray: CPUs (and torch threads) per actor (default 1)")
    pred.add_argument("--gpus-per-actor", type=float, metavar="X",
                      help="--executor ray: GPUs per actor (default: 1 where the cluster has GPUs, else 0)")
    pred.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="export a checkpoint for ONNX Runtime, OpenVINO or "
                                                "TorchScript")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", required=True, choices=("onnx", "openvino", "torchscript"))
    export.add_argument("--output", required=True, help="folder for the model file(s) and model.json")
    export.add_argument("--overwrite", action="store_true", help="replace an export already in --output")
    export.set_defaults(func=cmd_export)

    serve = commands.add_parser("serve",
                                help="score images sent over HTTP (FastAPI + uvicorn; extra [serve])")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                           "machine)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file accepted (413 "
                                                                         "above)")
    serve.add_argument("--max-pixels", type=int, default=50_000_000,
                       help="largest width x height accepted, read from the header before decoding (413 "
                            "above)")
    serve.add_argument("--timeout-s", type=float, default=30.0, help="seconds an image may wait for its "
                                                                     "result (504)")
    serve.add_argument("--max-batch", type=int, default=8, help="images scored together in one model call")
    serve.add_argument("--max-files", type=int, default=16, help="files per /predict/batch request (413 "
                                                                 "above)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.set_defaults(func=cmd_serve)

    bench = commands.add_parser("benchmark", help="train + test over categories; tables, CSV and GIFs")
    bench.add_argument("--root", required=True, help="folder holding the category folders (e.g. MVTec AD)")
    bench.add_argument("--categories", nargs="+", default=list(MVTEC_CATEGORIES))
    bench.add_argument("--config-dir", help="folder of <category>.yaml (default: "
                                            "./configs/anomaly/unsupervised/cfa when present)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    bench.add_argument("--output", default="runs/benchmark")
    bench.add_argument("--force", action="store_true", help="recompute categories that finished earlier")
    bench.add_argument("--backbones", nargs="+", metavar="NAME",
                       help="a grid over these backbones (default: the config's); the same as "
                            "--grid model.backbone=NAME,NAME")
    bench.add_argument("--grid", nargs="+", metavar="KEY=A,B",
                       help="a grid over config values, e.g. --grid data.crop=224,320 train.epochs=10,30 "
                            "(every combination); with more than one setting or seed, cells go to "
                            "<output>/<setting>/seed-<seed>/<category>/")
    bench.add_argument("--seeds", nargs="+", type=int, metavar="N",
                       help="a grid over these training seeds (train.seed); the tables show mean ± spread")
    bench.add_argument("--select-by", choices=("validation",),
                       help="validation: train with data.validation=synthetic and add a row of, per "
                            "category, "
                            "the setting (--backbones / --grid) with the best validation AUPRO (test labels "
                            "unused)")
    add_executor_arguments(bench, "task per cell")
    bench.add_argument("--cpus-per-task", type=positive_int, default=1, metavar="N",
                       help="--executor ray: CPUs each cell's task requests, and its torch threads "
                            "(default 1)")
    bench.add_argument("--gpus-per-task", type=float, metavar="X",
                       help="--executor ray: GPUs each cell's task requests (default: 1 where the cluster "
                            "has GPUs, else 0; 0.5 puts two cells on a GPU)")
    bench.set_defaults(func=cmd_benchmark)

    demo = commands.add_parser("demo", help="generate synthetic data, train and test on it (offline)")
    demo.add_argument("--kinds", nargs="+", choices=("texture", "object"), default=["texture", "object"],
                      help="synthetic categories to generate (default: both)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    add_output_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    for command in commands.choices.values():  # -v / -q after the sub-command too
        add_verbosity_arguments(command, default=argparse.SUPPRESS)
    serve.set_defaults(log_timestamps=True)  # a long-running service: time, level and logger on each line
    return parser


def run(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", logging.INFO), getattr(args, "log_timestamps", False))
    log.debug("cfa %s: %s", __version__, {k: v for k, v in vars(args).items() if k != "func"})
    try:
        code = args.func(args)
    except CfaError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; a training run continues with `cfa train --resume <its run folder>`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return code or EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
