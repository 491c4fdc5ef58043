"""`cfa predict`, `cfa export` and `cfa serve`: their parsers and what they run.

The options' defaults are those of the settings they fill: PredictOptions, RayPredictSettings and
ServeSettings (read when `cfa serve` is parsed: it needs the [serve] extra).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cfa_anomaly.cli.common import (
    add_executor_arguments,
    add_model_arguments,
    add_report_option,
    non_negative_int,
    positive_int,
    predictor_spec,
    uses_ray,
)
from cfa_anomaly.cli.reporting import finish_with_report
from cfa_anomaly.config_sections import EvaluationConfig
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.distributed.predict import RayPredictSettings
from cfa_anomaly.outputs import prepare_output_dir
from cfa_anomaly.predict import PANELS_ALL_UP_TO, PredictOptions

if TYPE_CHECKING:
    from cfa_anomaly.cli.common import Commands
    from cfa_anomaly.predict import PredictSummary

SCORE_FORMATS = {"csv": ("csv",), "jsonl": ("jsonl",), "both": ("csv", "jsonl")}  # --format: its files
log = logging.getLogger(__name__)


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """The streaming options of `cfa predict` (formats, maps, panels, strict, recursive)."""
    return PredictOptions(formats=SCORE_FORMATS[args.format], maps=args.maps, panels=args.panels,
                          strict=args.strict, recursive=args.recursive, read_workers=args.read_workers)


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


def cmd_predict(args: argparse.Namespace) -> None:
    ray = uses_ray(args)
    options = predict_options(args)
    spec = predictor_spec(args)
    predictor = spec.build()  # also with --executor ray: a model that cannot load fails here, before Ray
    output = prepare_output_dir(args.output, args.overwrite)
    if ray:
        from cfa_anomaly.distributed.predict import predict_images_ray

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
    finish_with_report(args, output, predictor.thresholds)


def cmd_export(args: argparse.Namespace) -> None:
    from cfa_anomaly.inference.export import export_checkpoint

    card = export_checkpoint(Path(args.checkpoint), args.format, Path(args.output), overwrite=args.overwrite)
    print(f"exported {args.checkpoint} as {args.format} to {args.output} (metadata: {card})")
    print(f"run it with: cfa predict --model {args.output} --output <folder> <images or folders>")


def add_decision_arguments(pred: argparse.ArgumentParser) -> None:
    """Where `cfa predict` decides defective and outlines: the model's stored thresholds unless given."""
    decide = pred.add_mutually_exclusive_group()
    decide.add_argument("--threshold", type=float,
                        help="decide with this image-score threshold instead of the held-out one the model "
                             "stores")
    decide.add_argument("--quantile", type=float, metavar="Q",
                        help="decide at this quantile (0..1] of the held-out normal images' scores the model "
                             "stores (default: the training's evaluation.threshold_quantile, "
                             f"{EvaluationConfig.threshold_quantile})")
    pred.add_argument("--pixel-threshold", type=float, metavar="X",
                      help="outline (and mask) pixels from this map value instead of the stored pixel "
                           "threshold")


def add_predict_output_arguments(pred: argparse.ArgumentParser) -> None:
    """What `cfa predict` reads and writes: PredictOptions."""
    pred.add_argument("--recursive", action="store_true", help="search folders' sub-folders for images too")
    pred.add_argument("--format", choices=tuple(SCORE_FORMATS),
                      default=next(name for name, written in SCORE_FORMATS.items()
                                   if written == PredictOptions.formats),
                      help="score rows as scores.csv (default), scores.jsonl or both")
    pred.add_argument("--maps", choices=("npz", "none"), default=PredictOptions.maps,
                      help="npz (default): maps.npz, or maps/shard-NNNNN.npz of "
                           f"{PredictOptions.shard_size} maps each for more images")
    pred.add_argument("--panels", choices=("all", "defects", "none"), default=PredictOptions.panels,
                      help="picture per image: all, only those decided defective, or none (default: all for "
                           f"up to {PANELS_ALL_UP_TO} images, else defects)")
    pred.add_argument("--strict", action="store_true",
                      help="stop at the first unreadable file (default: list it in the scores file and skip "
                           "it)")
    pred.add_argument("--read-workers", type=non_negative_int, default=PredictOptions.read_workers,
                      metavar="N",
                      help="threads that read and resize the next batches while the model scores (default "
                           "%(default)s: each batch in line); for slow or network disks and GPUs, where the "
                           "CPU would wait")


def add_actor_arguments(pred: argparse.ArgumentParser) -> None:
    """How wide `cfa predict --executor ray` runs: RayPredictSettings."""
    pred.add_argument("--actors", type=positive_int, default=RayPredictSettings.actors, metavar="N",
                      help="--executor ray: model replicas, each loading the model once (default: one per "
                           "GPU where the cluster has GPUs, else one per --cpus-per-actor CPUs less one CPU "
                           "for decoding)")
    pred.add_argument("--cpus-per-actor", type=positive_int, default=RayPredictSettings.cpus_per_actor,
                      metavar="N", help="--executor ray: CPUs (and torch threads) per actor (default "
                                        "%(default)s)")
    pred.add_argument("--gpus-per-actor", type=float, default=RayPredictSettings.gpus_per_actor, metavar="X",
                      help="--executor ray: GPUs per actor (default: 1 where the cluster has GPUs, else 0)")


def add_predict_parser(commands: Commands) -> None:
    pred = commands.add_parser("predict", help="score images: anomaly scores and maps out")
    add_model_arguments(pred)
    pred.add_argument("inputs", nargs="+",
                      help="image files, folders, .txt files listing image paths (one per line), or .csv / "
                           ".jsonl manifests with a path column")
    pred.add_argument("--output", required=True)
    pred.add_argument("--overwrite", action="store_true")
    add_decision_arguments(pred)
    add_predict_output_arguments(pred)
    add_report_option(pred)
    add_executor_arguments(pred, "Data pipeline (parallel decoding, model actors)")
    add_actor_arguments(pred)
    pred.set_defaults(func=cmd_predict)


def add_export_parser(commands: Commands) -> None:
    export = commands.add_parser("export", help="export a checkpoint for ONNX Runtime, OpenVINO or "
                                                "TorchScript")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", required=True, choices=("onnx", "openvino", "torchscript"))
    export.add_argument("--output", required=True, help="folder for the model file(s) and model.json")
    export.add_argument("--overwrite", action="store_true", help="replace an export already in --output")
    export.set_defaults(func=cmd_export)
