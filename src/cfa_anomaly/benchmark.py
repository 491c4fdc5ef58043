"""Train + test over a list of categories, resumable, with the result tables and the GIFs."""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfa_anomaly.config import MVTEC_CATEGORIES, ConfigError, load_config
from cfa_anomaly.data.samples import DatasetError, category_dir
from cfa_anomaly.io_utils import atomic_write_json, atomic_write_text
from cfa_anomaly.report import csv_report, markdown_report

CONFIG_DIR = Path("configs/anomaly/unsupervised/cfa")
METRICS_FILE = "metrics.json"
log = logging.getLogger(__name__)


def category_config_path(category: str, config_dir: Path | None) -> Path | None:
    """The category's YAML when the config folder has one; otherwise defaults are used."""
    if config_dir is None:
        return None
    path = config_dir / f"{category}.yaml"
    return path if path.is_file() else None


def finished_metrics(folder: Path) -> dict[str, Any] | None:
    """The metrics of a category that finished earlier (its metrics.json is written last)."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the entries that do not change results (where data and outputs live)."""
    trimmed = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items() if k != "output_dir"}
    trimmed.get("data", {}).pop("root", None)
    return trimmed


def run_benchmark(root: str | Path, output: Path, categories: Sequence[str] = MVTEC_CATEGORIES,
                  overrides: Sequence[str] = (), config_dir: Path | None = CONFIG_DIR,
                  force: bool = False, row_label: str | None = None) -> dict[str, Any]:
    """Each category into output/<category>/; finished ones are reused unless force. Returns the summary."""
    from cfa_anomaly.pipeline import train_and_test  # heavy imports only when running

    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float | None]] = {}
    problems: dict[str, str] = {}
    status: dict[str, str] = {}
    backbone = None
    for category in categories:
        folder = output / category
        config_path = category_config_path(category, config_dir)
        log.debug("[%s] config: %s", category, config_path or "the defaults")
        try:
            cfg = load_config(config_path, [*overrides, f"data.root={root}", f"data.category={category}"])
        except ConfigError as err:
            problems[category], status[category] = f"config error: {err}", "failed"
            log.error("[%s] %s", category, problems[category])
            continue
        backbone = cfg.model.backbone
        previous = None if force else finished_metrics(folder)
        if previous is not None and _comparable(previous.get("config", {})) != _comparable(cfg.to_dict()):
            problems[category], status[category] = (
                f"finished earlier in {folder} with another config; pass --force to redo it or use a new output "
                "folder", "skipped")
            log.warning("[%s] skipped: %s", category, problems[category])
            continue
        if previous is not None:
            results[category], status[category] = previous["metrics"], "reused"
            log.info("[%s] finished earlier: reusing %s", category, folder / METRICS_FILE)
            continue
        try:
            category_dir(root, category)
        except DatasetError as err:
            problems[category], status[category] = f"skipped: {err}", "skipped"
            log.warning("[%s] skipped: %s", category, err)
            continue
        if folder.exists():  # an unfinished earlier attempt of this benchmark: its own folder, started anew
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        log.info("[%s] training and testing (%s) -> %s", category, backbone, folder)
        try:
            report = train_and_test(cfg, folder)
        except Exception as err:  # noqa: BLE001 - one failing category must not stop the others
            problems[category], status[category] = f"failed: {type(err).__name__}: {err}", "failed"
            atomic_write_text(folder / "error.txt", traceback.format_exc())
            log.error("[%s] failed: %s (traceback in %s)", category, err, folder / "error.txt")
            continue
        results[category], status[category] = report["metrics"], "done"
    write_benchmark_files(output, results, problems, row_label or backbone or "cfa", categories)
    summary = {"results": results, "problems": problems, "status": status}
    atomic_write_json(output / "summary.json", summary)
    return summary


def write_benchmark_files(output: Path, results: dict[str, dict[str, float | None]], problems: dict[str, str],
                          row_label: str, categories: Sequence[str] | None = None) -> None:
    """results.md (four tables), results.csv, and each category's GIF copied to assets/<category>.gif.
    categories: the requested ones, each a column ('-' where it has no result); default: those with results."""
    assets = output / "assets"
    assets.mkdir(exist_ok=True)
    for category in results:
        gif = output / category / f"{category}.gif"
        if gif.is_file():
            shutil.copyfile(gif, assets / f"{category}.gif")
    demos = "\n".join(f"### {c}\n<p align=\"left\"><img src=\"assets/{c}.gif\" width=\"100%\" /></p>\n"
                      for c in results if (assets / f"{c}.gif").is_file())
    atomic_write_text(output / "results.md", markdown_report(results, row_label, problems, categories=categories)
                      + ("\n## Demo\n\n" + demos if demos else ""))
    atomic_write_text(output / "results.csv", csv_report(results, categories))
