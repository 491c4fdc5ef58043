"""`cfa predict --executor ray`: Ray Data reads and decodes the images in parallel tasks, a pool of actors
scores them (each loads the model once: the checkpoint's torch model or an exported ONNX / OpenVINO /
TorchScript model), and this process writes the results through the same writers as the local predict:
scores.csv / scores.jsonl in input order, maps.npz or maps/shard-*.npz, panels. Unreadable files get a row
with the reason, as locally.

Images are read by path on the workers, so on a cluster they must be at the same paths on every node.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from cfa_anomaly.console import PACKAGE_LOGGER, progress
from cfa_anomaly.data.images import tensor_to_rgb
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.distributed.cluster import cluster_resources, ray_session
from cfa_anomaly.inference import ModelCard, Predictor
from cfa_anomaly.inference.spec import PredictorSpec
from cfa_anomaly.predict import (
    PredictionSink,
    PredictOptions,
    PredictSummary,
    collect_images,
    panel_wanted,
    read_for_model,
    strict_stop,
)

DECODE_BLOCK = 32  # images per block of the input dataset: one decoding task each
# CPUs a decoding task requests: half a CPU, and unlike the actors' whole CPUs, so that Ray Data keeps
# decoding in its own tasks (running beside the actors) instead of fusing it into them.
DECODE_CPUS = 0.5
Batch = dict[str, np.ndarray]
log = logging.getLogger(__name__)


@dataclass
class RayPredictSettings:
    """Where and how wide: the cluster, the number of model actors and what each requests."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local instance
    actors: int | None = None  # None: one per GPU, else one per cpus_per_actor CPUs less one for decoding
    cpus_per_actor: int = 1  # also the actor's torch threads
    gpus_per_actor: float | None = None  # None: 1 where the cluster has GPUs, else 0


def decode_batch(batch: Batch, card: ModelCard) -> Batch:
    """Read and preprocess files: image (n, 3, crop, crop) float32 in 0..1 (zeros where unreadable) and
    error ("" where read, else why not), as the local predict reads them (predict.read_for_model)."""
    files = batch["file"]
    images = np.zeros((len(files), 3, card.crop, card.crop), np.float32)
    errors = []
    for k, file in enumerate(files):
        try:
            images[k] = read_for_model(card, Path(str(file))).numpy()
            errors.append("")
        except DatasetError as err:
            errors.append(str(err))
    return {"path": batch["path"], "image": images, "error": np.asarray(errors, dtype=object)}


class ScoringActor:
    """One model replica: loads the model once, then scores the readable images of each batch."""

    def __init__(self, spec: PredictorSpec, panels: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.predictor = spec.build()
        self.panels = panels

    def __call__(self, batch: Batch) -> Batch:
        errors = batch["error"]
        count, crop = len(errors), self.predictor.crop
        readable = np.flatnonzero([not error for error in errors])
        maps = np.zeros((count, crop, crop), np.float32)
        scores = np.full(count, np.nan, np.float32)
        seconds = 0.0
        if readable.size:
            start = time.perf_counter()
            images = torch.from_numpy(batch["image"][readable])  # a copy: the indexing gathers the rows
            maps[readable], scores[readable] = self.predictor.score_batch(images)
            seconds = time.perf_counter() - start
        result = {"path": batch["path"], "error": errors, "score": scores, "map": maps,
                  "seconds": np.full(count, seconds / count)}
        if self.panels != "none":  # the image as the model saw it, only for the panels to draw
            pictures = np.zeros((count, crop, crop, 3), np.uint8)
            for k in readable:
                if panel_wanted(self.panels, float(scores[k]), self.predictor.thresholds):
                    pictures[k] = tensor_to_rgb(torch.from_numpy(np.array(batch["image"][k])))
            result["picture"] = pictures
        return result


def _actor_plan(ray: ModuleType, settings: RayPredictSettings, batches: int) -> tuple[int, float]:
    """(actors, GPUs per actor) from the settings and the cluster; never more actors than batches."""
    resources = cluster_resources(ray)
    gpus = settings.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources["GPU"] >= 1 else 0.0
    actors = settings.actors
    if actors is None and gpus > 0:
        actors = int(resources["GPU"] // gpus)
    elif actors is None:
        actors = int((resources["CPU"] - 1) // settings.cpus_per_actor)
    return max(1, min(actors, batches)), gpus


@contextmanager
def _ordered_quiet_data(ray: ModuleType) -> Iterator[None]:
    """Ray Data keeps the input order (the rows come out as listed); below -v its progress bars and
    progress lines are off (the command has its own bar) and only its warnings show."""
    context = ray.data.DataContext.get_current()
    loggers = {logging.getLogger("ray.data"): logging.WARNING,
               logging.getLogger("ray.data._internal.progress"): logging.ERROR}  # "progress bars disabled"
    before = (context.execution_options.preserve_order, context.enable_progress_bars,
              {logger: logger.level for logger in loggers})
    context.execution_options.preserve_order = True
    if not logging.getLogger(PACKAGE_LOGGER).isEnabledFor(logging.DEBUG):
        context.enable_progress_bars = False
        for logger, level in loggers.items():
            logger.setLevel(level)
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = before[:2]
        for logger, level in before[2].items():
            logger.setLevel(level)


def _pipeline(ray: ModuleType, spec: PredictorSpec, predictor: Predictor, paths: Sequence[Path], panels: str,
              settings: RayPredictSettings) -> tuple[Any, int]:
    """The dataset of scored rows (input order) and the number of actors scoring it."""
    items = [{"path": str(p), "file": str(p.expanduser().absolute())} for p in paths]
    actors, gpus = _actor_plan(ray, settings, math.ceil(len(paths) / predictor.batch_size))
    dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / DECODE_BLOCK))
    decoded = dataset.map_batches(decode_batch, batch_format="numpy", batch_size=None, num_cpus=DECODE_CPUS,
                                  fn_kwargs={"card": predictor.card})
    scored = decoded.map_batches(ScoringActor, batch_format="numpy", batch_size=predictor.batch_size,
                                 fn_constructor_kwargs={"spec": spec, "panels": panels,
                                                        "threads": settings.cpus_per_actor},
                                 compute=ray.data.ActorPoolStrategy(size=actors),
                                 num_cpus=settings.cpus_per_actor, num_gpus=gpus)
    log.info("scoring %d images with %d Ray actor(s), %g CPU and %g GPU each", len(paths), actors,
             settings.cpus_per_actor, gpus)
    return scored, actors


def _write_batch(batch: Batch, sink: PredictionSink, strict: bool) -> None:
    """Rows, maps and panels of one scored batch, in input order."""
    for k, (path, error) in enumerate(zip(batch["path"], batch["error"])):
        if error:
            if strict:
                raise strict_stop(str(error))
            sink.skip(str(path), str(error))
        else:
            sink.scored(str(path), batch["map"][k], float(batch["score"][k]),
                        picture=lambda k=k: batch["picture"][k])
    sink.summary.compute_seconds += float(batch["seconds"].sum())
    sink.rows.flush()


def predict_images_ray(spec: PredictorSpec, predictor: Predictor, inputs: Sequence[str | Path], output: Path,
                       options: PredictOptions | None = None,
                       settings: RayPredictSettings | None = None) -> PredictSummary:
    """Score image files on Ray and write what predict.predict_images writes: the same rows, maps and panels.

    spec: how each actor loads the model; predictor: the same model loaded here (its threshold, batch size
    and preprocessing decide the outputs). Memory here stays bounded: rows are written as batches arrive.
    """
    options = options or PredictOptions()
    settings = settings or RayPredictSettings()
    paths = collect_images(inputs, options.recursive)
    output.mkdir(parents=True, exist_ok=True)
    sink = PredictionSink(predictor, output, options, options.panels_for(len(paths)))
    sink.summary.images = len(paths)
    complete = False
    try:
        if paths:
            with ray_session(settings.address) as ray, _ordered_quiet_data(ray):
                scored, sink.summary.workers = _pipeline(ray, spec.absolute(), predictor, paths, sink.panels,
                                                         settings)
                batches = scored.iter_batches(batch_size=predictor.batch_size, batch_format="numpy")
                total = math.ceil(len(paths) / predictor.batch_size)
                for batch in progress(batches, desc="predict", unit="batch", total=total):
                    _write_batch(batch, sink, options.strict)
        complete = True
    finally:
        summary = sink.close(complete)
    return summary
