"""The names of the files a run writes, in one place: every writer and reader takes them from here."""

from __future__ import annotations

from pathlib import Path

# A training / test run (cfa train, cfa test, a cfa benchmark cell)
CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.pt"  # per-epoch state of an unfinished training run (cfa train --resume)
CONFIG = "config.yaml"
TRAIN_SUMMARY = "train.json"
METRICS = "metrics.json"  # written last: its presence marks a finished run
SCORES = "scores"  # scores.csv (cfa test, cfa predict) and scores.jsonl (cfa predict --format jsonl)
MAPS = "maps.npz"
MAP_SHARDS = "maps"  # cfa predict of more than one shard: maps/shard-NNNNN.npz
PANELS = "panels"
ROC = "roc.png"
HISTOGRAM = "score_histogram.png"
VALIDATION_PLOT = "validation.png"
ERROR = "error.txt"  # a failed benchmark cell's reason
REPORT = "report.html"  # the run's page (cfa report; also written by train, test, predict, benchmark, demo)
REPORT_FILES = "report_files"  # the page's thumbnails, beside it

# An exported model (cfa export)
MODEL_METADATA = "model.json"

# A benchmark (cfa benchmark, cfa demo)
RESULTS = "results.md"
RESULTS_CSV = "results.csv"
RESULTS_BY_KIND = "results_by_kind.csv"
SUMMARY = "summary.json"
ASSETS = "assets"


def scores_file(kind: str = "csv") -> str:
    """scores.csv or scores.jsonl."""
    return f"{SCORES}.{kind}"


def map_shard(folder: Path, index: int) -> Path:
    """The index-th shard of a streamed prediction's maps."""
    return folder / MAP_SHARDS / f"shard-{index:05d}.npz"
