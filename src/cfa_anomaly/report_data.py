"""What report.html shows of a training or test run, or of a `cfa predict` output, read from its folder:
the result tables, every scored image (score, decision, label, defect kind, thumbnail, panel), the held-out
threshold, and the run's config, versions, machine and timings.

The page itself recomputes decisions, counts, ROC and histogram from these scores in the browser;
`report_benchmark.py` gathers a benchmark's page, `html_report.py` writes it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfa_anomaly import __version__, runfiles
from cfa_anomaly.errors import CfaError
from cfa_anomaly.outputs import METRIC_LABELS, SCORE_COLUMNS, PanelNames
from cfa_anomaly.report import PER_KIND_COLUMNS
from cfa_anomaly.thresholds import DEFECTIVE, Thresholds
from cfa_anomaly.thumbnails import ThumbSource, write_thumbnails

RUN, PREDICT, BENCHMARK = "run", "predict", "benchmark"
EXPECTED = (f"{runfiles.METRICS} or {runfiles.TRAIN_SUMMARY} (cfa train, cfa test), {runfiles.SUMMARY} "
            f"(cfa benchmark, cfa demo) or {runfiles.scores_file()} (cfa predict)")
TRAIN_KEYS = ("images", "epochs", "final_loss", "radius", "feature_seconds", "bank_seconds",
              "compile_seconds", "train_seconds")


class ReportError(CfaError, ValueError):
    """A folder a report cannot be made of: missing, not a run, or with a damaged run file."""


@dataclass(frozen=True)
class HeldOut:
    """The image threshold a run decided at, and where it came from (None: not known)."""

    value: float | None = None
    source: str = ""
    statement: str | None = None

    @classmethod
    def of(cls, thresholds: Thresholds) -> HeldOut:
        return cls(thresholds.image, thresholds.image_source, thresholds.statement())

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "statement": self.statement}


def folder_kind(folder: Path) -> str:
    """RUN, PREDICT or BENCHMARK, from the files the folder holds; a ReportError naming it otherwise."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ReportError(f"{folder} {what}: expected a run folder holding {EXPECTED}")
    if (folder / runfiles.SUMMARY).is_file():
        return BENCHMARK
    if (folder / runfiles.METRICS).is_file() or (folder / runfiles.TRAIN_SUMMARY).is_file():
        return RUN
    if any((folder / runfiles.scores_file(kind)).is_file() for kind in ("csv", "jsonl")):
        return PREDICT
    raise ReportError(f"{folder} is not a run folder: it holds none of {EXPECTED}")


def read_json(path: Path) -> dict[str, Any] | None:
    """A run's JSON file (None when absent); a ReportError naming it when it cannot be read."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"cannot read {path}: {err}; the run did not finish writing it, or it was "
                          "changed") from err


def score_rows(folder: Path) -> list[dict[str, str]]:
    """scores.csv's rows (SCORE_COLUMNS as text), or scores.jsonl's with the same keys; [] without either."""
    table, lines = folder / runfiles.scores_file("csv"), folder / runfiles.scores_file("jsonl")
    try:
        if table.is_file():
            with open(table, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        elif lines.is_file():
            text = lines.read_text(encoding="utf-8")
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
            rows = [{k: "" if r.get(k) is None else str(r[k]) for k in SCORE_COLUMNS} for r in records]
        else:
            return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise ReportError(f"cannot read the scores in {folder}: {err}") from err
    missing = [c for c in ("path", "score", "decision") if rows and c not in rows[0]]
    if missing:
        raise ReportError(f"{table} has no column {', '.join(missing)}: expected {', '.join(SCORE_COLUMNS)}")
    return rows


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _existing(path: str) -> Path | None:
    """An input image as written in the scores (relative: to the current folder), when it exists."""
    candidate = Path(path)
    return candidate if path and candidate.is_file() else None


def panel_paths(folder: Path, rows: list[dict[str, str]]) -> list[Path | None]:
    """Each row's panel under panels/ where one was drawn: named as the run named them (PanelNames, over the
    rows that got one: every scored image, or, when fewer panels were drawn, those decided defective)."""
    panels = folder / runfiles.PANELS
    found: list[Path | None] = [None] * len(rows)
    if not panels.is_dir():
        return found
    scored = [i for i, row in enumerate(rows) if _number(row.get("score")) is not None]
    drawn = sum(1 for _ in panels.rglob("*.png"))
    eligible = scored if drawn >= len(scored) else [i for i in scored if rows[i]["decision"] == DEFECTIVE]
    names = PanelNames()
    for index in eligible:
        path = panels / f"{names(rows[index]['path'])}.png"
        found[index] = path if path.is_file() else None
    return found


def _relative(path: Path | None, folder: Path) -> str | None:
    return None if path is None else Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()


def images_data(folder: Path, rows: list[dict[str, str]]) -> dict[str, list[Any]]:
    """The page's image list, by column: path, score, decision, label, kind (the parent folder's name),
    area, error, thumb (under report_files/), panel and input (relative to the folder; None: none)."""
    panels = panel_paths(folder, rows)
    inputs = [_existing(row["path"]) for row in rows]
    thumbs = write_thumbnails([ThumbSource(panel, image) for panel, image in zip(panels, inputs)],
                              folder / runfiles.REPORT_FILES)
    label = [_number(row.get("label")) for row in rows]
    return {"path": [row["path"] for row in rows],
            "score": [_number(row["score"]) for row in rows],
            "decision": [row["decision"] or None for row in rows],
            "label": [None if value is None else int(value) for value in label],
            "kind": [Path(row["path"]).parent.name for row in rows],
            "area": [_number(row.get("defect_area")) for row in rows],
            "error": [row.get("error") or None for row in rows],
            "thumb": [None if name is None else f"{runfiles.REPORT_FILES}/{name}" for name in thumbs],
            "panel": [_relative(path, folder) for path in panels],
            "input": [_relative(path, folder) for path in inputs]}


def decided_threshold(images: dict[str, list[Any]]) -> HeldOut:
    """The threshold the scores' decisions imply (a `cfa predict` output): the lowest score decided
    defective reproduces every decision (score >= it)."""
    flagged = [s for s, d in zip(images["score"], images["decision"]) if d == DEFECTIVE and s is not None]
    if not flagged:
        return HeldOut(source="not recorded with the scores (no image was decided defective)")
    return HeldOut(min(flagged), "the lowest score decided defective in the scores file (the model's "
                                 "threshold is between it and the highest score decided good)")


def _table(title: str, header: list[str], rows: list[list[Any]], note: str = "") -> dict[str, Any]:
    return {"title": title, "header": header, "rows": rows, "note": note}


def formatted(value: Any, digits: int = 4) -> Any:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("-" if value is None else value)


def run_tables(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics, each defect kind's and the test set's, as the page's tables."""
    results = metrics.get("metrics") or {}
    tables = [_table("Metrics", ["metric", "value"],
                     [[label, formatted(results.get(key))] for key, label in METRIC_LABELS.items()],
                     (metrics.get("notes") or {}).get("pixel_metrics", ""))] if results else []
    kinds = metrics.get("per_kind") or {}
    if kinds:
        header = ["defect kind", *(c.replace("_", " ").replace("auroc", "AUROC") for c in PER_KIND_COLUMNS)]
        rows = [[kind, *(formatted(row.get(c)) for c in PER_KIND_COLUMNS)] for kind, row in kinds.items()]
        tables.append(_table("Per defect kind", header, rows,
                             "image AUROC: the kind's images against the good test images"))
    return tables


def pairs_of(record: dict[str, Any] | None, keys: tuple[str, ...] | None = None) -> list[list[str]]:
    record = record or {}
    return [[key, str(record[key])] for key in (keys or tuple(record)) if key in record]


def run_details(folder: Path, metrics: dict[str, Any], train: dict[str, Any],
                held_out: HeldOut) -> list[dict[str, Any]]:
    """The run's thresholds, training and test timings, versions and machine, and config.yaml."""
    pixel = ((metrics.get("threshold") or train.get("threshold") or {}).get("pixel")) or {}
    sources = [[name, f"{value:.6g}: {source}"] for name, value, source in (
        ("image threshold", held_out.value, held_out.source), ("pixel threshold", pixel.get("value"),
                                                               pixel.get("source"))) if value is not None]
    training = pairs_of(metrics.get("train") or train.get("train"), TRAIN_KEYS)
    testing = pairs_of(metrics.get("test")) + pairs_of(metrics, ("geometry", "model", "precision"))
    details = [{"title": "Thresholds", "pairs": sources}, {"title": "Training", "pairs": training},
               {"title": "Test", "pairs": testing},
               {"title": "Versions and machine",
                "pairs": pairs_of(metrics.get("environment") or train.get("environment"))}]
    config = folder / runfiles.CONFIG
    if config.is_file():
        details.append({"title": runfiles.CONFIG, "text": config.read_text(encoding="utf-8")})
    return [d for d in details if d.get("pairs") or d.get("text")]


def page_base(kind: str, title: str, folder: Path) -> dict[str, Any]:
    """What every page has: its kind, title, folder, the package version and when it was made."""
    return {"kind": kind, "title": title, "folder": str(folder.resolve()), "version": __version__,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_page(folder: Path, held_out: HeldOut | None = None) -> dict[str, Any]:
    """The page data of a training / test run (RUN) or of a `cfa predict` output (PREDICT). held_out: the
    threshold the decisions were made at, where the caller knows it (else: metrics.json's, or the one the
    decisions imply)."""
    metrics = read_json(folder / runfiles.METRICS) or {}
    train = read_json(folder / runfiles.TRAIN_SUMMARY) or {}
    kind = RUN if metrics or train else PREDICT
    images = images_data(folder, score_rows(folder))
    if held_out is None and kind == RUN:
        image = ((metrics.get("threshold") or train.get("threshold") or {}).get("image")) or {}
        held_out = HeldOut(image.get("value"), image.get("source", ""), image.get("statement"))
    held_out = held_out or decided_threshold(images)
    config = metrics.get("config") or train.get("config") or {}
    category = metrics.get("category") or (config.get("data") or {}).get("category") or folder.name
    backbone = metrics.get("backbone") or (config.get("model") or {}).get("backbone")
    title = f"{category} ({backbone})" if backbone else f"{folder.name}: predictions"
    gif = (metrics.get("files") or {}).get("gif")
    return {**page_base(kind, title, folder), "threshold": held_out.to_dict(),
            "at_threshold": metrics.get("at_threshold"), "tables": run_tables(metrics), "images": images,
            "labelled": any(label is not None for label in images["label"]),
            "details": run_details(folder, metrics, train, held_out),
            "gif": gif if gif and (folder / gif).is_file() else None}
