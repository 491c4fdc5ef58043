"""What report.html shows of a `cfa benchmark` or `cfa demo` output: the four result tables across
categories (settings and seeds of a grid as results.md has them), each defect kind's figures, and per cell
its status, its outcome at its held-out threshold, its scores and labels for the ROC curves, and a link to
its own page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfa_anomaly import runfiles
from cfa_anomaly.benchmark import results_grid
from cfa_anomaly.report import TABLES, grid_coverage_lines, grid_rows, ordered
from cfa_anomaly.report_data import (
    BENCHMARK,
    ReportError,
    formatted,
    page_base,
    pairs_of,
    read_json,
    score_rows,
)

KIND_NOTE = "image AUROC: the kind's images against the category's good test images"


def benchmark_tables(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The four tables of results.md: a row per setting, a column per category and their average."""
    cells, results = summary["cells"], summary.get("results") or {}
    places = {key: (cell["row"], cell["category"], cell["seed"]) for key, cell in cells.items()
              if key in results}
    grid = results_grid({key: results[key] for key in places}, places, summary.get("selection"))
    categories = ordered([cell["category"] for cell in cells.values()])
    tables = []
    for metric, title in TABLES:
        header, *rows = grid_rows(grid, metric, categories)
        tables.append({"title": title, "header": ["setting", *header[1:]], "rows": rows,
                       "note": " ".join(grid_coverage_lines(grid, metric, categories))})
    return tables


def kinds_table(finished: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finished cell's defect kinds (metrics.json per_kind) in one table (none without kinds)."""
    rows = [[key, kind, row.get("images"), *(formatted(row.get(k)) for k in ("image_auroc", "pixel_auroc"))]
            for key, metrics in finished.items() for kind, row in (metrics.get("per_kind") or {}).items()]
    header = ["cell", "defect kind", "images", "image AUROC", "pixel AUROC"]
    return [{"title": "Per defect kind", "header": header, "rows": rows, "note": KIND_NOTE}] if rows else []


def labelled_scores(folder: Path) -> tuple[list[float], list[int]]:
    """A finished cell's test scores and labels (scores.csv), for its ROC curve."""
    pairs = [(float(row["score"]), int(row["label"])) for row in score_rows(folder)
             if row.get("score") and row.get("label")]
    return [score for score, _ in pairs], [label for _, label in pairs]


def cell_entry(folder: Path, key: str, summary: dict[str, Any], metrics: dict[str, Any] | None,
               report: Path | None) -> dict[str, Any]:
    """One cell: status, problem, time, outcome at its threshold, scores and labels, its page's link."""
    scores, labels = labelled_scores(folder / key) if metrics else ([], [])
    return {"key": key, "status": (summary.get("status") or {}).get(key, "-"),
            "problem": (summary.get("problems") or {}).get(key),
            "seconds": summary["cells"][key].get("seconds"),
            "at_threshold": (metrics or {}).get("at_threshold"), "scores": scores, "labels": labels,
            "report": None if report is None else report.relative_to(folder).as_posix()}


def benchmark_page(folder: Path, reports: dict[str, Path]) -> dict[str, Any]:
    """The page data of a benchmark output; reports: each cell's report.html, by cell key."""
    summary = read_json(folder / runfiles.SUMMARY) or {}
    if not isinstance(summary.get("cells"), dict):
        raise ReportError(f"{folder / runfiles.SUMMARY} has no \"cells\": it is not the summary of cfa "
                          "benchmark or cfa demo")
    finished = {key: read_json(folder / key / runfiles.METRICS) for key in summary.get("results") or {}}
    finished = {key: metrics for key, metrics in finished.items() if metrics}
    first = next(iter(finished.values()), {})
    details = [{"title": "Run", "pairs": [["executor", str(summary.get("executor", "-"))],
                                          ["cells", str(len(summary["cells"]))]]},
               {"title": "Versions and machine (first cell)", "pairs": pairs_of(first.get("environment"))}]
    cells = [cell_entry(folder, key, summary, finished.get(key), reports.get(key))
             for key in summary["cells"]]
    return {**page_base(BENCHMARK, f"Benchmark: {folder.name}", folder),
            "tables": benchmark_tables(summary) + kinds_table(finished), "cells": cells,
            "problems": summary.get("problems") or {}, "details": [d for d in details if d["pairs"]]}
