"""One cell of a benchmark grid: a (category, backbone, seed) trained and tested into its own folder.

`run_cell` is the unit of work of every executor: the in-process loop calls it directly, the Ray executor
ships the Cell (a resolved config and a folder, both plain data) to a worker and calls it there.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfa_anomaly import runfiles
from cfa_anomaly.config import config_from_dict
from cfa_anomaly.io_utils import atomic_write_text

ERROR_FILE = runfiles.ERROR
DONE, REUSED, SKIPPED, FAILED = "done", "reused", "skipped", "failed"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """What to train and where: the resolved config (Config.to_dict) and the cell's own folder."""

    key: str  # the category alone (one backbone, one seed), else "<backbone>/seed-<seed>/<category>"
    category: str
    backbone: str
    seed: int
    folder: Path
    config: dict[str, Any] = field(repr=False)


@dataclass
class CellOutcome:
    """What became of a cell: done (or reused) with its metrics, or skipped / failed with the reason."""

    key: str
    status: str
    metrics: dict[str, float | None] | None = None
    problem: str | None = None
    seconds: float | None = None  # the cell's own wall time, where it ran (train, test, figures)


def failure(cell: Cell, reason: str, details: str | None = None) -> CellOutcome:
    """A failed cell; details (a traceback, Ray's error) go to <folder>/error.txt when the folder exists."""
    if details is not None and cell.folder.is_dir():
        atomic_write_text(cell.folder / ERROR_FILE, details)
    return CellOutcome(cell.key, FAILED, problem=f"failed: {reason}")


def run_cell(cell: Cell) -> CellOutcome:
    """Train and test one cell into its folder, started anew (an unfinished earlier attempt is removed).

    Raises what training raises, after writing the traceback to <folder>/error.txt: the executor decides
    whether to retry and how to report it.
    """
    from cfa_anomaly.pipeline import train_and_test  # heavy imports only when running

    start = time.perf_counter()
    if cell.folder.exists():
        shutil.rmtree(cell.folder)
    cell.folder.mkdir(parents=True)
    try:
        report = train_and_test(config_from_dict(cell.config), cell.folder)
    except Exception:
        atomic_write_text(cell.folder / ERROR_FILE, traceback.format_exc())
        raise
    seconds = round(time.perf_counter() - start, 2)
    return CellOutcome(cell.key, DONE, metrics=report["metrics"], seconds=seconds)
