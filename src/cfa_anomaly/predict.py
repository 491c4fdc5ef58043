"""`cfa predict`: score image files as a stream, with bounded memory whatever their number.

Images are read one by one, scored in batches of the Predictor's batch size, and written as they come:
score rows (CSV / JSON Lines), maps in shards, panels. Unreadable files get a row with the reason and are
skipped (or stop the run with strict).
"""

from __future__ import annotations

import csv
import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cfa_anomaly import runfiles
from cfa_anomaly.console import progress
from cfa_anomaly.data.images import read_rgb, tensor_to_rgb
from cfa_anomaly.data.samples import IMAGE_EXTENSIONS, DatasetError, list_images
from cfa_anomaly.inference import ModelCard, Predictor
from cfa_anomaly.outputs import (
    MAPS_SHARD_SIZE,
    MapShardWriter,
    PanelNames,
    ScoreRowWriter,
    write_stream_panel,
)
from cfa_anomaly.thresholds import DEFECTIVE, Thresholds


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files of a folder (sorted); with recursive, of its sub-folders too (hidden ones skipped)."""
    if not recursive:
        return list_images(folder)
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def _list_file(path: Path) -> list[Path]:
    """The image paths a .txt list names, one per line (blank lines and # comments skipped); relative
    paths are taken from the current folder, as on the command line."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Path(line) for line in lines if line and not line.startswith("#")]


def _manifest(path: Path) -> list[Path]:
    """The `path` column of a .csv manifest (a header row naming it) or of a .jsonl one (an object per line);
    other columns are ignored. Relative paths are taken from the current folder, as for a .txt list."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "path" not in (reader.fieldnames or []):
            raise DatasetError(f"manifest {path} has no 'path' column (header: {reader.fieldnames}); add one "
                               "naming each image file")
        return [Path(row["path"]) for row in reader if row["path"]]
    paths = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"manifest {path}, line {number}: not JSON ({err})") from err
        if not isinstance(record, dict) or not record.get("path"):
            raise DatasetError(f"manifest {path}, line {number}: expected an object with a \"path\" key")
        paths.append(Path(record["path"]))
    return paths


MANIFEST_SUFFIXES = (".csv", ".jsonl")


def collect_images(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted; recursive: sub-folders too), a .txt
    file read as a list of image paths, and a .csv / .jsonl manifest as the paths of its `path` column.
    Listed files are not checked here: they are when read."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = _folder_images(item, recursive)
            if not found:
                hint = "" if recursive else " (--recursive searches its sub-folders)"
                raise DatasetError(f"no image files in {item}{hint}")
            paths += found
        elif item.is_file() and item.suffix.lower() == ".txt":
            paths += _list_file(item)
        elif item.is_file() and item.suffix.lower() in MANIFEST_SUFFIXES:
            paths += _manifest(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetError(f"input not found: {item}")
    return paths


PANELS_ALL_UP_TO = 200  # default --panels: all for up to this many images, else only the flagged ones


@dataclass
class PredictOptions:
    """How `cfa predict` writes its outputs (see docs/deployment.md, "Scoring many images")."""

    formats: tuple[str, ...] = ("csv",)  # scores.csv and/or scores.jsonl
    maps: str = "npz"  # npz: maps.npz or maps/shard-*.npz; none
    panels: str | None = None  # all, defects, none; None: all up to PANELS_ALL_UP_TO images, else defects
    strict: bool = False  # stop at the first unreadable file instead of listing and skipping it
    recursive: bool = False
    shard_size: int = MAPS_SHARD_SIZE
    # Threads that read and preprocess the next batches while the model scores the current one (0: read
    # each batch in line, before it is scored). Memory: at most READ_AHEAD batches of images beyond it.
    # Off by default: on a 2-core CPU, where the model takes both cores, it changed speed by x0.93-1.04
    # (benchmarks/read_ahead.py); it is for slow disks and GPUs, where the CPU waits otherwise.
    read_workers: int = 0

    def panels_for(self, count: int) -> str:
        return self.panels or ("all" if count <= PANELS_ALL_UP_TO else "defects")


@dataclass
class PredictSummary:
    """What a streamed prediction did; per image only the unreadable files are kept."""

    images: int = 0  # inputs
    scored: int = 0
    flagged: int = 0  # decided defective (0 without a threshold)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    panels: int = 0
    map_files: list[Path] = field(default_factory=list)
    score_files: list[Path] = field(default_factory=list)
    compute_seconds: float = 0.0  # in the model, summed over the workers
    workers: int = 1  # model replicas that scored (Ray actors; 1 in this process)

    @property
    def images_per_second(self) -> float:
        """Scoring speed of one model replica (model time only)."""
        return self.scored / self.compute_seconds if self.compute_seconds > 0 else float("nan")


def panel_wanted(panels: str, score: float, thresholds: Thresholds) -> bool:
    """Whether an image gets a panel: panels all, or defects and the image is decided defective."""
    return panels == "all" or (panels == "defects" and thresholds.label(score) == DEFECTIVE)


def read_for_model(card: ModelCard, path: Path) -> torch.Tensor:
    """An image file read and preprocessed with the model's geometry (local and Ray predict); a DatasetError
    naming the file when it cannot be read."""
    return card.preprocess(read_rgb(path))


def strict_stop(reason: str) -> DatasetError:
    """The error --strict stops with at the first unreadable file."""
    return DatasetError(f"{reason} (--strict stops at the first unreadable file)")


def _read(predictor: Predictor, path: Path, strict: bool) -> torch.Tensor | str:
    """The preprocessed image, or why it cannot be read (with strict: a DatasetError naming the file)."""
    try:
        return read_for_model(predictor.card, path)
    except DatasetError as err:
        if strict:
            raise strict_stop(str(err)) from err
        return str(err)


class PredictionSink:
    """Writes each scored batch right away: score rows, map shards and panels (local and Ray predict)."""

    def __init__(self, predictor: Predictor, output: Path, options: PredictOptions, panels: str) -> None:
        self.thresholds = predictor.thresholds
        self.output = output
        self.panels = panels if self.thresholds.image is not None or panels != "defects" else "none"
        self.rows = ScoreRowWriter(output, options.formats)
        self.maps = (MapShardWriter(output, options.shard_size, self.thresholds) if options.maps == "npz"
                     else None)
        self.summary = PredictSummary()
        self.panel_names = PanelNames()

    def skip(self, path: Path, reason: str) -> None:
        self.rows.write(str(path), None, "", error=reason)
        self.summary.skipped.append((str(path), reason))

    def scored(self, path: Path | str, anomaly_map: np.ndarray, score: float,
               picture: Callable[[], np.ndarray]) -> None:
        """A scored image's row, map and (where wanted) panel; picture() gives the (crop, crop, 3) uint8
        image the model saw, asked for only when a panel is drawn."""
        decision = self.thresholds.label(score)
        defective = decision == DEFECTIVE
        mask = self.thresholds.defect_mask(anomaly_map, score)
        self.rows.write(str(path), score, decision or "", None if mask is None else float(mask.mean()))
        self.summary.scored += 1
        self.summary.flagged += int(defective)
        if self.maps is not None:
            self.maps.add(str(path), anomaly_map, score, mask)
        if panel_wanted(self.panels, score, self.thresholds):
            write_stream_panel(self.output / runfiles.PANELS, picture(), anomaly_map, score, self.thresholds,
                               self.panel_names(path))
            self.summary.panels += 1

    def close(self, complete: bool) -> PredictSummary:
        self.rows.close(complete)
        if complete:
            self.summary.map_files = self.maps.close() if self.maps is not None else []
            self.summary.score_files = list(self.rows.paths)
        return self.summary


READ_AHEAD = 2  # batches read ahead of the one being scored, when read_workers > 0


def read_batches(predictor: Predictor, batches: Sequence[list[Path]], strict: bool,
                 workers: int) -> Iterator[tuple[list[Path], list[torch.Tensor | str]]]:
    """Each batch with its files read (a tensor, or why the file cannot be read), in input order; with
    workers > 0 the next READ_AHEAD batches are read by that many threads meanwhile. With strict, the first
    unreadable file raises here, in order."""
    if workers == 0:
        for batch in batches:
            yield batch, [_read(predictor, path, strict) for path in batch]
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="cfa-read")
    pending: deque[tuple[list[Path], list[Future]]] = deque()
    try:
        for batch in batches:
            pending.append((batch, [pool.submit(_read, predictor, path, strict) for path in batch]))
            if len(pending) > READ_AHEAD:
                done, futures = pending.popleft()
                yield done, [future.result() for future in futures]
        while pending:
            done, futures = pending.popleft()
            yield done, [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _score_batch(predictor: Predictor, batch: list[Path], images: list[torch.Tensor | str],
                 sink: PredictionSink) -> None:
    """Score one batch of read files and write its results, in input order."""
    readable = [i for i, image in enumerate(images) if isinstance(image, torch.Tensor)]
    results: dict[int, tuple[np.ndarray, float]] = {}
    if readable:
        start = time.perf_counter()
        maps, scores = predictor.score_batch(torch.stack([images[i] for i in readable]))
        sink.summary.compute_seconds += time.perf_counter() - start
        results = {i: (maps[k], float(scores[k])) for k, i in enumerate(readable)}
    for i, path in enumerate(batch):
        image = images[i]
        if isinstance(image, str):
            sink.skip(path, image)
        else:
            sink.scored(path, *results[i], picture=lambda image=image: tensor_to_rgb(image))
    sink.rows.flush()


def predict_images(predictor: Predictor, inputs: Sequence[str | Path], output: Path,
                   options: PredictOptions | None = None) -> PredictSummary:
    """Score image files in batches of predictor.batch_size and write the results as they come:
    scores.csv (and/or scores.jsonl), maps (maps.npz or maps/shard-*.npz) and panels/ in output.

    Memory does not grow with the number of images (one map shard at most); unreadable files get a row
    with the reason and are skipped, or stop the run with options.strict.
    """
    options = options or PredictOptions()
    paths = collect_images(inputs, options.recursive)
    output.mkdir(parents=True, exist_ok=True)
    sink = PredictionSink(predictor, output, options, options.panels_for(len(paths)))
    sink.summary.images = len(paths)
    batches = [paths[i: i + predictor.batch_size] for i in range(0, len(paths), predictor.batch_size)]
    complete = False
    read = read_batches(predictor, batches, options.strict, options.read_workers)
    try:
        for batch, images in progress(read, desc="predict", unit="batch", total=len(batches)):
            _score_batch(predictor, batch, images, sink)
        complete = True
    finally:
        read.close()  # stops the reading threads, also when scoring or writing failed
        summary = sink.close(complete)
    return summary
