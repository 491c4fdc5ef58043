"""report.html: one self-contained page per run, opened from the disk with no server and no network.

The page's CSS, script and data are inline (the template, CSS and script are package data under
report_page/); its thumbnails lie beside it in report_files/, and it shows the run's own panels. The data
is gathered by report_data.py (a run, a `cfa predict` output) and report_benchmark.py (a benchmark, whose
cells each get their own page first).
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from cfa_anomaly import runfiles
from cfa_anomaly.io_utils import atomic_write_text
from cfa_anomaly.report_benchmark import benchmark_page
from cfa_anomaly.report_data import BENCHMARK, HeldOut, folder_kind, read_json, run_page

PAGE_FILES = ("page.html", "page.css", "page.js")  # the template, its style and its script (report_page/)
STYLE, SCRIPT, DATA = "/*STYLE*/", "/*SCRIPT*/", "/*DATA*/"
log = logging.getLogger(__name__)


def script_json(data: Any) -> str:
    """JSON that can stand inside a <script> element: no '<' (so no '</script>'), no NaN."""
    return json.dumps(data, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def render_page(data: dict[str, Any]) -> str:
    """The page: the template with its CSS, its script and the data put in."""
    folder = resources.files("cfa_anomaly") / "report_page"
    template, style, script = (folder.joinpath(name).read_text(encoding="utf-8") for name in PAGE_FILES)
    head, rest = template.split(STYLE)
    middle, tail = rest.split(DATA)
    before, after = tail.split(SCRIPT)
    return "".join([head, style, middle, script_json(data), before, script, after])


def write_page(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / runfiles.REPORT
    atomic_write_text(path, render_page(data))
    return path


def write_report(folder: str | Path, held_out: HeldOut | None = None) -> Path:
    """Write folder/report.html (and its thumbnails in folder/report_files/) for a run, a `cfa predict`
    output or a benchmark (each finished cell's page too); returns its path. held_out: the threshold a
    `cfa predict` decided at (else the one the run records or its decisions imply). A ReportError names a
    folder that is none of these."""
    folder = Path(folder)
    if folder_kind(folder) != BENCHMARK:
        return write_page(folder, run_page(folder, held_out))
    summary = read_json(folder / runfiles.SUMMARY) or {}
    reports = {}
    for key in summary.get("results") or {}:
        cell = folder / key
        if (cell / runfiles.METRICS).is_file():
            reports[key] = write_page(cell, run_page(cell))
    return write_page(folder, benchmark_page(folder, reports))
