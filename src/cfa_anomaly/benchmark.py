"""Train + test over a grid of categories x settings (backbones, any config key) x seeds, resumable, with the
result tables and GIFs.

The grid is planned here (configs resolved, finished cells reused, missing datasets skipped); the cells
left to run go to an executor: in this process one after another (LocalExecutor, the default), or as Ray
tasks (cfa_anomaly.distributed.RayExecutor). Both run `cells.run_cell` and give the same files.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cfa_anomaly import runfiles
from cfa_anomaly.cells import DONE, ERROR_FILE, FAILED, REUSED, SKIPPED, Cell, CellOutcome, failure, run_cell
from cfa_anomaly.config import MVTEC_CATEGORIES, ConfigError, config_from_dict, load_config
from cfa_anomaly.data.folder import dataset_samples
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.io_utils import atomic_write_json, atomic_write_text
from cfa_anomaly.report import (
    csv_report,
    grid_csv_report,
    grid_report,
    per_kind_csv,
    per_kind_markdown,
    single_row,
)
from cfa_anomaly.sweep import BACKBONE_KEY, Setting, parse_axes, setting_row, settings_grid

CONFIG_DIR = Path("configs/anomaly/unsupervised/cfa")
METRICS_FILE = runfiles.METRICS
log = logging.getLogger(__name__)


class CellExecutor(Protocol):
    """Runs the cells left to run and yields their outcomes (in any order)."""

    name: str

    def run(self, cells: Sequence[Cell]) -> Iterator[CellOutcome]: ...


class LocalExecutor:
    """One cell after another in this process; a failing cell does not stop the others."""

    name = "local"

    def run(self, cells: Sequence[Cell]) -> Iterator[CellOutcome]:
        for cell in cells:
            log.info("[%s] training and testing (%s) -> %s", cell.key, cell.backbone, cell.folder)
            try:
                yield run_cell(cell)
            except Exception as err:  # noqa: BLE001 - one failing cell must not stop the others
                yield failure(cell, f"{type(err).__name__}: {err}")  # run_cell wrote the traceback


@dataclass(frozen=True)
class GridPoint:
    """Where a cell sits in the tables: its category, row (its setting's label), seed, and the setting's
    folder and the backbone its config resolved to (None after a config error)."""

    category: str
    row: str
    seed: int | str
    folder: str
    backbone: str | None


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


def _comparable(config: dict[str, Any]) -> dict[str, Any] | None:
    """A config with the keys added since it was saved at their defaults, without the entries that do not
    change results (where data and outputs live); None when it is not a usable config."""
    try:
        config = config_from_dict(config).to_dict()
    except ConfigError:
        return None
    trimmed = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items() if k != "output_dir"}
    trimmed.get("data", {}).pop("root", None)
    return trimmed


def cell_key(category: str, folder: str | None, seed: int | None, grid: bool) -> str:
    """The cell's name and its folder under the output: <category> alone, or in a grid (several settings
    or seeds) <setting folder>/seed-<seed>/<category>."""
    if not grid:
        return category
    return f"{folder or 'default'}/seed-{'default' if seed is None else seed}/{category}"


def plan_cell(root: Path, output: Path, category: str, setting: Setting, seed: int | None,
              overrides: Sequence[str], config_dir: Path | None, force: bool,
              grid: bool) -> tuple[GridPoint, Cell | CellOutcome]:
    """The cell to run, or its outcome already: reused (finished earlier with the same config), skipped
    (finished with another config, or no dataset) or failed (a config error)."""
    config_path = category_config_path(category, config_dir)
    chosen = [*setting.as_overrides(), *([f"train.seed={seed}"] if seed is not None else [])]
    key = cell_key(category, setting.folder, seed, grid)
    log.debug("[%s] config: %s", key, config_path or "the defaults")
    try:
        cfg = load_config(config_path,
                          [*overrides, *chosen, f"data.root={root}", f"data.category={category}"])
    except ConfigError as err:
        point = GridPoint(category, setting_row(setting, None), "default" if seed is None else seed,
                          setting.folder, None)
        return point, CellOutcome(key, FAILED, problem=f"config error: {err}")
    folder = setting.folder or cfg.model.backbone
    key = cell_key(category, folder, cfg.train.seed, grid)
    point = GridPoint(category, setting_row(setting, cfg), cfg.train.seed, folder, cfg.model.backbone)
    cell = Cell(key, category, cfg.model.backbone, cfg.train.seed, output / key, cfg.to_dict())
    previous = None if force else finished_metrics(cell.folder)
    if previous is not None and _comparable(previous.get("config") or {}) != _comparable(cell.config):
        return point, CellOutcome(key, SKIPPED, problem=f"finished earlier in {cell.folder} with another "
                                  "config; pass --force to redo it or use a new output folder")
    if previous is not None:
        log.info("[%s] finished earlier: reusing %s", key, cell.folder / METRICS_FILE)
        return point, CellOutcome(key, REUSED, metrics=previous["metrics"])
    try:
        dataset_samples(cfg.data, "train")  # the category is there, in its layout
    except DatasetError as err:
        return point, CellOutcome(key, SKIPPED, problem=f"skipped: {err}")
    return point, cell


def _log_outcome(outcome: CellOutcome, folder: Path | None) -> None:
    if outcome.status == FAILED:
        where = f" (details in {folder / ERROR_FILE})" if folder and (folder / ERROR_FILE).is_file() else ""
        log.error("[%s] %s%s", outcome.key, outcome.problem, where)
    elif outcome.status == SKIPPED:
        log.warning("[%s] %s", outcome.key, outcome.problem)


def benchmark_settings(backbones: Sequence[str] = (), grid: Sequence[str] = ()) -> list[Setting]:
    """The settings to sweep: --backbones a b is --grid model.backbone=a,b, put first."""
    items = [f"{BACKBONE_KEY}={','.join(backbones)}", *grid] if backbones else list(grid)
    return settings_grid(parse_axes(items))


def refuse_unusable_settings(settings: Sequence[Setting], outcomes: dict[str, CellOutcome | None]) -> None:
    """A swept setting that makes a config unusable (e.g. data.crop above data.resize) is refused before
    any training, naming every such cell, rather than left to fail cell by cell."""
    if not any(setting.overrides for setting in settings):
        return  # no sweep: a category's bad YAML fails its own cell only, the others run
    unusable = [f"[{key}] {outcome.problem}" for key, outcome in outcomes.items()
                if outcome is not None and outcome.status == FAILED]
    if unusable:
        raise ConfigError(f"{len(unusable)} cell(s) of the grid have a config that cannot be used; nothing "
                          "was trained:\n  " + "\n  ".join(unusable) + "\nkeys that must change together "
                          "can be tied, e.g. --grid data.resize+data.crop=256+224,366+320")


def run_benchmark(root: str | Path, output: Path, categories: Sequence[str] = MVTEC_CATEGORIES,
                  overrides: Sequence[str] = (), config_dir: Path | None = CONFIG_DIR,
                  force: bool = False, row_label: str | None = None, backbones: Sequence[str] = (),
                  seeds: Sequence[int] = (), executor: CellExecutor | None = None,
                  select_by_validation: bool = False, grid: Sequence[str] = ()) -> dict[str, Any]:
    """Each (category, setting, seed) cell into output/<category>/ (one setting and one seed) or
    output/<setting>/seed-<seed>/<category>/ (a grid); finished ones are reused unless force.

    grid: ["section.key=a,b", ...], swept as their product; backbones: ["a", "b"] is
    "model.backbone=a,b" (empty: the config's). seeds: empty means the config's. select_by_validation: over
    two or more settings, trained with data.validation=synthetic, pick per category the setting of the best
    validation AUPRO (test labels unused) and add its test metrics as a row "selected by synthetic
    validation". Returns the summary (also written to summary.json).
    """
    settings = benchmark_settings(backbones, grid)
    if select_by_validation and len(settings) < 2:
        raise ConfigError("--select-by validation chooses between settings: give two or more with "
                          "--backbones or --grid")
    if select_by_validation:
        overrides = [*overrides, "data.validation=synthetic"]
    executor = executor or LocalExecutor()
    is_grid = len(settings) > 1 or len(seeds) > 1
    root = Path(root).expanduser().absolute()  # absolute: a Ray worker may run in another folder
    output.mkdir(parents=True, exist_ok=True)
    points: dict[str, GridPoint] = {}
    outcomes: dict[str, CellOutcome | None] = {}
    to_run: list[Cell] = []
    for setting in settings:
        for seed in seeds or [None]:
            for category in categories:
                point, planned = plan_cell(root, output.absolute(), category, setting, seed, overrides,
                                           config_dir, force, is_grid)
                points[planned.key] = point
                if isinstance(planned, Cell):
                    to_run.append(planned)
                    outcomes[planned.key] = None  # keeps the planned order
                else:
                    outcomes[planned.key] = planned
    refuse_unusable_settings(settings, outcomes)
    for outcome in outcomes.values():
        if outcome is not None:
            _log_outcome(outcome, None)
    folders = {cell.key: cell.folder for cell in to_run}
    if to_run:
        log.info("%d cell(s) to train and test with the %s executor", len(to_run), executor.name)
    for outcome in executor.run(to_run):
        outcomes[outcome.key] = outcome
        _log_outcome(outcome, folders.get(outcome.key))
    finished = {key: outcome for key, outcome in outcomes.items() if outcome is not None}
    overrides_of = {setting.folder: dict(setting.overrides) for setting in settings}
    summary = {
        "executor": executor.name,
        "results": {k: o.metrics for k, o in finished.items() if o.status in (DONE, REUSED)},
        "problems": {k: o.problem for k, o in finished.items() if o.problem},
        "status": {k: o.status for k, o in finished.items()},
        "cells": {k: {"category": p.category, "row": p.row, "setting": overrides_of.get(p.folder, {}),
                      "backbone": p.backbone, "seed": p.seed,
                      **({"seconds": outcomes[k].seconds} if outcomes[k] and outcomes[k].seconds else {})}
                  for k, p in points.items()},
    }
    if select_by_validation:
        summary["selection"] = select_settings(output, summary["results"], points)
    if is_grid:
        write_grid_files(output, summary["results"], points, summary["problems"], categories,
                         summary.get("selection"))
    else:
        last = list(points.values())[-1].row if points else None
        write_benchmark_files(output, summary["results"], summary["problems"], row_label or last or "cfa",
                              categories)
    atomic_write_json(output / runfiles.SUMMARY, summary)
    return summary


def _demo_section(gifs: dict[str, str]) -> str:
    """The results.md section that shows the GIFs copied to assets/ (title -> file name)."""
    if not gifs:
        return ""
    return "\n## Demo\n\n" + "\n".join(
        f"### {title}\n<p align=\"left\"><img src=\"assets/{name}\" width=\"100%\" /></p>\n"
        for title, name in gifs.items())


def write_benchmark_files(output: Path, results: dict[str, dict[str, float | None]], problems: dict[str, str],
                          row_label: str, categories: Sequence[str] | None = None) -> None:
    """One backbone, one seed: results.md (four tables), results.csv, and each category's GIF copied to
    assets/<category>.gif. categories: the requested ones, each a column ('-' where it has no result)."""
    assets = output / runfiles.ASSETS
    assets.mkdir(exist_ok=True)
    gifs = {}
    for category in results:
        gif = output / category / f"{category}.gif"
        if gif.is_file():
            shutil.copyfile(gif, assets / f"{category}.gif")
            gifs[category] = f"{category}.gif"
    kinds = {category: (finished_metrics(output / category) or {}).get("per_kind") or {} for category in results}
    atomic_write_text(output / runfiles.RESULTS, grid_report(single_row(results, row_label), problems,
                                                         categories=categories)
                      + per_kind_markdown(kinds) + _demo_section(gifs))
    atomic_write_text(output / runfiles.RESULTS_CSV, csv_report(results, categories))
    atomic_write_text(output / runfiles.RESULTS_BY_KIND, per_kind_csv(kinds))


def validation_aupro(folder: Path) -> float | None:
    """The synthetic-validation AUPRO of a finished cell at the epoch its checkpoint holds (metrics.json)."""
    validation = (finished_metrics(folder) or {}).get("validation") or {}
    epoch = (validation.get("selected") or {}).get("epoch")
    values = [h.get("aupro") for h in validation.get("history", []) if h.get("epoch") == epoch]
    return values[0] if values else None


def select_settings(output: Path, results: dict[str, dict[str, float | None]],
                    points: dict[str, GridPoint]) -> dict[str, dict[str, Any]]:
    """Per category, the setting (row) with the best mean validation AUPRO over its finished seeds (the
    first listed on a tie), by validation scores only: {category: {setting, validation_aupro, candidates}}."""
    scores: dict[str, dict[str, list[float]]] = {}
    for key in results:
        value = validation_aupro(output / key)
        if value is not None:
            point = points[key]
            scores.setdefault(point.category, {}).setdefault(point.row, []).append(value)
    selection = {}
    for category, by_row in scores.items():
        means = {row: sum(values) / len(values) for row, values in by_row.items()}
        best = max(means, key=means.get)
        selection[category] = {"setting": best, "validation_aupro": round(means[best], 5),
                               "candidates": {row: round(v, 5) for row, v in means.items()}}
        log.info("[%s] selected by synthetic validation: %s (validation AUPRO %s)", category, best,
                 "; ".join(f"{row} {v:.4f}" for row, v in means.items()))
    return selection


SELECTED_ROW = "selected by synthetic validation"


def results_grid(results: dict[str, dict[str, float | None]], places: dict[str, tuple[str, str, Any]],
                 selection: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, dict[Any, Any]]]:
    """The tables' grid (row -> category -> seed -> metrics) of the finished cells, each placed by
    places[key] = (row, category, seed) (GridPoint's, or summary.json's "cells"); with a selection, a row
    of the chosen settings' test metrics, chosen without test labels."""
    tables: dict[str, dict[str, dict[Any, Any]]] = {}
    for key, metrics in results.items():
        row, category, seed = places[key]
        tables.setdefault(row, {}).setdefault(category, {})[seed] = metrics
    if selection:
        tables[SELECTED_ROW] = {category: dict(tables[chosen["setting"]][category])
                                for category, chosen in selection.items()}
    return tables


def write_grid_files(output: Path, results: dict[str, dict[str, float | None]], points: dict[str, GridPoint],
                     problems: dict[str, str], categories: Sequence[str] | None = None,
                     selection: dict[str, dict[str, Any]] | None = None) -> None:
    """A grid: results.md (a row per setting, mean ± spread over seeds), results.csv (a row per cell, then
    means and spreads), and per setting and category the GIF of its lowest seed as
    assets/<setting folder>-<category>.gif."""
    tables = results_grid(results, {key: (p.row, p.category, p.seed) for key, p in points.items()}, selection)
    lowest: dict[tuple[str, str], str] = {}  # (row, category) -> the key of its lowest seed's cell
    for key in results:
        point = points[key]
        first = lowest.get((point.row, point.category))
        if first is None or point.seed < points[first].seed:  # finished cells have integer seeds
            lowest[(point.row, point.category)] = key
    assets = output / runfiles.ASSETS
    assets.mkdir(exist_ok=True)
    gifs = {}
    for (row, category), key in lowest.items():
        point = points[key]
        gif = output / key / f"{category}.gif"
        if gif.is_file():
            shutil.copyfile(gif, assets / f"{point.folder}-{category}.gif")
            gifs[f"{row}: {category} (seed {point.seed})"] = f"{point.folder}-{category}.gif"
    preamble = ""
    if selection:
        chosen = "; ".join(f"{category}: {c['setting']}" for category, c in sorted(selection.items()))
        preamble = (f"Row \"{SELECTED_ROW}\": per category, the setting with the best AUPRO on synthetic "
                    "defects painted onto held-out normal images (test labels unused; see "
                    f"benchmarks/README.md for how far that ranking can be trusted): {chosen}.")
    atomic_write_text(output / runfiles.RESULTS, grid_report(tables, problems, preamble, categories)
                      + _demo_section(gifs))
    atomic_write_text(output / runfiles.RESULTS_CSV, grid_csv_report(tables))
