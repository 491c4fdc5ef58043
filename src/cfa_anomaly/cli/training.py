"""`cfa train`, `cfa test`, `cfa benchmark` and `cfa demo`: their parsers and what they run."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfa_anomaly import runfiles
from cfa_anomaly.cli.common import (
    EXIT_CATEGORIES_FAILED,
    EXIT_OK,
    add_config_arguments,
    add_data_root_argument,
    add_executor_arguments,
    add_model_arguments,
    add_output_arguments,
    add_overrides_argument,
    add_report_option,
    add_tracking_arguments,
    config_from_args,
    output_folder,
    positive_int,
    predictor_from_args,
    tracking_overrides,
    uses_ray,
)
from cfa_anomaly.cli.reporting import finish_with_report
from cfa_anomaly.config import Config, load_config
from cfa_anomaly.data.sets import DATASETS
from cfa_anomaly.distributed.grid import RayExecutor
from cfa_anomaly.outputs import OutputExistsError, prepare_output_dir

if TYPE_CHECKING:
    from cfa_anomaly.cli.common import Commands

DEMO_CATEGORY = "synthetic"
DEMO_KINDS = ("texture", "object")
# The demo's generated categories: 48 normal images, half of them held out so that its thresholds rest on
# 24 normal images (a new good part exceeds the image threshold with probability 1/25), and 20 good test
# images so that its false-alarm share can be read.
DEMO_COUNTS = {"n_train": 48, "n_test_good": 20, "n_test_per_defect": 3}
log = logging.getLogger(__name__)


def run_training(cfg: Config, args: argparse.Namespace, run_test: bool = True) -> Path:
    """Train (and test) in --output or a new run folder; the report or the checkpoint's path on stdout."""
    from cfa_anomaly.pipeline import train_and_test
    from cfa_anomaly.run_data import check_data
    from cfa_anomaly.run_report import print_report

    split = check_data(cfg, run_test)  # a missing or broken dataset fails before an output folder is made
    output = output_folder(args, cfg.output_dir, cfg.data.category)
    source = (f"{cfg.data.normal_dir} (folder layout)" if cfg.data.layout == "folder"
              else Path(cfg.data.root) / cfg.data.category)
    log.info("training CFA (%s) on %s; output: %s", cfg.model.backbone, source, output)
    report = train_and_test(cfg, output, run_test=run_test, split=split)
    if run_test:
        print_report(report, output)
    else:
        print(f"checkpoint written to {output / runfiles.CHECKPOINT}")
    finish_with_report(args, output)
    return output


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        resume_training(args)
        return
    run_training(config_from_args(args.config, args), args, run_test=not args.no_test)


def resume_training(args: argparse.Namespace) -> None:
    """Continue a killed run in its own folder, from its last completed epoch, with its saved config."""
    from cfa_anomaly.config import config_from_dict
    from cfa_anomaly.pipeline import train_and_test
    from cfa_anomaly.run_report import print_report
    from cfa_anomaly.train import read_training_state

    folder = Path(args.resume)
    state = read_training_state(folder / runfiles.TRAIN_STATE)
    cfg = config_from_dict(state["config"])
    log.info("resuming %s after epoch %s of %s", folder, state["epoch"], cfg.train.epochs)
    report = train_and_test(cfg, folder, run_test=not args.no_test, resume=state)
    if not args.no_test:
        print_report(report, folder)
    finish_with_report(args, folder)


def cmd_test(args: argparse.Namespace) -> None:
    from cfa_anomaly.run_report import evaluate_predictor, print_report

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
    finish_with_report(args, output)


def demo_overrides(extra: Sequence[str]) -> list[str]:
    """The embedded default: an offline ImageNet backbone and the paper's training settings."""
    return ["model.backbone=mobilenet_v2", "train.epochs=30", "data.holdout_fraction=0.5", *extra]


def report_problems(summary: dict[str, Any], requested: int, noun: str = "categories") -> int:
    """Name the categories (or grid cells) without results (failed or skipped) in one line on stderr; the
    exit code of the run. Their reasons are not repeated: the benchmark logged each one when it happened,
    and results.md lists them under "Not included"."""
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
    code = report_problems(summary, len(categories))
    finish_with_report(args, output)
    return code


def benchmark_executor(args: argparse.Namespace) -> RayExecutor | None:
    """The executor --executor names: this process (local: None) or Ray tasks (ray, with --address and the
    per-task resources)."""
    if not uses_ray(args):
        return None
    return RayExecutor(address=args.address, cpus_per_task=args.cpus_per_task,
                       gpus_per_task=args.gpus_per_task)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from cfa_anomaly.benchmark import CONFIG_DIR, run_benchmark

    config_dir = Path(args.config_dir) if args.config_dir else (CONFIG_DIR if CONFIG_DIR.is_dir() else None)
    output = Path(args.output)
    layout, categories = DATASETS[args.dataset]
    args.categories = args.categories or list(categories)
    overrides = [f"data.layout={layout}", *tracking_overrides(args), *args.overrides]
    summary = run_benchmark(args.root, output, args.categories, overrides, config_dir, force=args.force,
                            backbones=args.backbones or (), seeds=args.seeds or (),
                            grid=args.grid or (), executor=benchmark_executor(args),
                            select_by_validation=args.select_by == "validation")
    noun = "categories" if len(summary["status"]) == len(args.categories) else "cells"
    done = [c for c, s in summary["status"].items() if s in ("done", "reused")]
    print(f"\n{len(done)} of {len(summary['status'])} {noun} in {output / runfiles.RESULTS} and "
          f"{runfiles.RESULTS_CSV}")
    code = report_problems(summary, len(summary["status"]), noun)
    finish_with_report(args, output)
    return code


def add_train_parser(commands: Commands) -> None:
    train = commands.add_parser("train",
                                help="train on <root>/<category>/train/good (or --normal-dir), then test")
    train.add_argument("--config", help="YAML config (e.g. configs/anomaly/unsupervised/cfa/bottle.yaml)")
    train.add_argument("--no-test", action="store_true", help="train and save the checkpoint only")
    add_config_arguments(train)
    train.set_defaults(func=cmd_train)


def add_test_parser(commands: Commands) -> None:
    test = commands.add_parser("test", help="evaluate a checkpoint or an exported model on its category's "
                                            "test split")
    add_model_arguments(test)
    add_data_root_argument(test, "override the data root (MVTec layout; a folder-layout model tests on its "
                                 "own folders)")
    add_output_arguments(test)
    add_report_option(test)
    test.set_defaults(func=cmd_test)


def add_grid_arguments(bench: argparse.ArgumentParser) -> None:
    """The settings and seeds a benchmark compares, and how it picks among them."""
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


def add_benchmark_parser(commands: Commands) -> None:
    bench = commands.add_parser("benchmark", help="train + test over categories; tables, CSV and GIFs")
    bench.add_argument("--root", required=True, help="folder holding the category folders (e.g. MVTec AD)")
    bench.add_argument("--dataset", choices=list(DATASETS), default="mvtec",
                       help="the data set under --root, read as it ships (sets data.layout; default "
                            "%(default)s)")
    bench.add_argument("--categories", nargs="+",
                       help="categories to run (default: all of --dataset's)")
    bench.add_argument("--config-dir", help="folder of <category>.yaml (default: "
                                            "./configs/anomaly/unsupervised/cfa when present)")
    add_overrides_argument(bench)
    add_tracking_arguments(bench)
    bench.add_argument("--output", default="runs/benchmark")
    bench.add_argument("--force", action="store_true", help="recompute categories that finished earlier")
    add_grid_arguments(bench)
    add_report_option(bench)
    add_executor_arguments(bench, "task per cell")
    bench.add_argument("--cpus-per-task", type=positive_int, default=RayExecutor.cpus_per_task, metavar="N",
                       help="--executor ray: CPUs each cell's task requests, and its torch threads "
                            "(default %(default)s)")
    bench.add_argument("--gpus-per-task", type=float, default=RayExecutor.gpus_per_task, metavar="X",
                       help="--executor ray: GPUs each cell's task requests (default: 1 where the cluster "
                            "has GPUs, else 0; 0.5 puts two cells on a GPU)")
    bench.set_defaults(func=cmd_benchmark)


def add_demo_parser(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="generate synthetic data, train and test on it (offline)")
    demo.add_argument("--kinds", nargs="+", choices=DEMO_KINDS, default=list(DEMO_KINDS),
                      help="synthetic categories to generate (default: both)")
    add_overrides_argument(demo)
    add_output_arguments(demo)
    add_report_option(demo)
    demo.set_defaults(func=cmd_demo)
