"""Result tables over categories: Markdown in the original project's format, and CSV.

One row per setting (a backbone, or a combination of swept config values); with several seeds a cell shows
the mean and the spread (sample standard deviation) over the seeds. `csv_report` is
the one-setting, one-seed case of `grid_csv_report`; `single_row` makes a grid of one row for `grid_report`.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence

from cfa_anomaly.config import MVTEC_CATEGORIES

TABLES: tuple[tuple[str, str], ...] = (
    ("image_auroc", "Image-Level AUC"),
    ("pixel_auroc", "Pixel-Level AUC"),
    ("pixel_f1_max", "Pixel F1 Score"),
    ("aupro", "AUPRO (FPR <= 0.3)"),
    ("aupimo", "AUPIMO (FPR 1e-5 to 1e-4)"),
)
Metrics = Mapping[str, float | None]
Grid = Mapping[str, Mapping[str, Mapping[int, Metrics]]]  # row (setting) -> category -> seed -> metrics


def column_title(category: str) -> str:
    """'metal_nut' -> 'Metal Nut' (the original tables' headers)."""
    return " ".join(part.capitalize() for part in category.split("_"))


def ordered(categories: Sequence[str]) -> list[str]:
    """MVTec AD categories in the original tables' order, then any others alphabetically (each once)."""
    known = [c for c in MVTEC_CATEGORIES if c in categories]
    return known + sorted({c for c in categories if c not in MVTEC_CATEGORIES})


def average(values: Sequence[float | None]) -> float | None:
    """Mean over the defined values; None when there are none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def spread(values: Sequence[float | None]) -> float | None:
    """Sample standard deviation over the defined values; None with fewer than two."""
    defined = [v for v in values if v is not None]
    return statistics.stdev(defined) if len(defined) > 1 else None


def single_row(results: Mapping[str, Metrics], row_label: str, seed: int = 0) -> Grid:
    """One backbone and one seed: {category: metrics} as a grid of one row."""
    return {row_label: {category: {seed: metrics} for category, metrics in results.items()}}


def _categories(grid: Grid, categories: Sequence[str] | None = None) -> list[str]:
    """The tables' columns: every requested category (run or not), and any with results; in order."""
    return ordered([*(categories or []), *(c for row in grid.values() for c in row)])


def _seed_values(by_seed: Mapping[int, Metrics] | None, metric: str) -> list[float | None]:
    return [m.get(metric) for m in (by_seed or {}).values()]


def _seed_averages(row: Mapping[str, Mapping[int, Metrics]], metric: str) -> list[float | None]:
    """Per seed (in seed order), the average over the categories (the spread of the Avg column)."""
    seeds = sorted({s for by_seed in row.values() for s in by_seed})
    return [average([row[c][s].get(metric) for c in row if s in row[c]]) for s in seeds]


def _cell(value: float | None, deviation: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if deviation is None else f"{value:.3f} ± {deviation:.3f}"


def grid_rows(grid: Grid, metric: str, categories: Sequence[str] | None = None) -> list[list[str]]:
    """One table as rows of text cells: the header ('', 'Avg', a column per category: every requested one,
    '-' where it has no result), then a row per setting with the average of the defined values."""
    categories = _categories(grid, categories)
    rows = [["", "Avg", *(column_title(c) for c in categories)]]
    for label, row in grid.items():
        means = [average(_seed_values(row.get(c), metric)) for c in categories]
        cells = [_cell(mean, spread(_seed_values(row.get(c), metric))) for c, mean in zip(categories, means)]
        rows.append([label, _cell(average(means), spread(_seed_averages(row, metric))), *cells])
    return rows


def grid_table(grid: Grid, metric: str, categories: Sequence[str] | None = None) -> str:
    """grid_rows as a Markdown table."""
    header, *body = grid_rows(grid, metric, categories)
    lines = ["| | " + " | ".join(header[1:]) + " |",
             "| --- | :---: | " + " | ".join(":---:" for _ in header[2:]) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in body)])


def grid_coverage_lines(grid: Grid, metric: str, categories: Sequence[str] | None = None) -> list[str]:
    """Per row, which categories its Avg is over: 'Avg over all n categories.', or 'Avg over k of n
    categories (A, B); not run or failed ('-'): C; undefined ('-'): D'."""
    columns = _categories(grid, categories)
    lines = []
    for label, row in grid.items():
        means = {c: average(_seed_values(row.get(c), metric)) for c in columns}
        included = [column_title(c) for c in columns if means[c] is not None]
        missing = [column_title(c) for c in columns if c not in row]
        undefined = [column_title(c) for c in columns if c in row and means[c] is None]
        prefix = f"{label}: " if len(grid) > 1 else ""
        if len(included) == len(columns):
            lines.append(prefix + (f"Avg over all {len(columns)} categories." if len(columns) > 1
                                   else "Avg over the one category."))
            continue
        parts = [f"Avg over {len(included)} of {len(columns)} categories ({', '.join(included)})" if included
                 else f"No Avg: none of the {len(columns)} categories has the value"]
        if missing:
            parts.append(f"not run or failed ('-'): {', '.join(missing)}")
        if undefined:
            parts.append(f"undefined ('-'): {', '.join(undefined)}")
        lines.append(prefix + "; ".join(parts))
    return lines


def _seed_counts(grid: Grid) -> list[int]:
    return sorted({len(by_seed) for row in grid.values() for by_seed in row.values()})


def grid_report(grid: Grid, problems: Mapping[str, str] | None = None, preamble: str = "",
                categories: Sequence[str] | None = None) -> str:
    """All four tables, a column for every requested category (default: those with results); cells that
    did not finish show '-' and are listed, not dropped silently."""
    parts = ["# Results", ""]
    if preamble:
        parts += [preamble, ""]
    counts = _seed_counts(grid)
    if counts and counts[-1] > 1:
        seeds = sorted({s for row in grid.values() for by_seed in row.values() for s in by_seed})
        parts += [(f"Each value is the mean ± the sample standard deviation over the seeds that finished "
                   f"(of {', '.join(map(str, seeds))}); Avg's spread is that of the per-seed averages over "
                   "the categories."), ""]
    for metric, title in TABLES:
        parts += [f"### {title}", "", grid_table(grid, metric, categories), "",
                  "\n".join(grid_coverage_lines(grid, metric, categories)), ""]
    parts.append("'-' is a category that was not run or failed (see Not included), or an undefined value "
                 "(n/a), e.g. the pixel metrics of a category whose defective test images lack masks (its "
                 "metrics.json notes say why). Avg is the mean over the categories that have the value; the "
                 "line under each table names them. Pixel F1 is the best F1 over thresholds on the test set "
                 "(test-fitted).")
    if problems:
        parts += ["", "### Not included", ""]
        parts += [f"- {cell}: {reason}" for cell, reason in sorted(problems.items())]
    return "\n".join(parts) + "\n"


def _formatted(values: Sequence[float | None]) -> list[str]:
    return ["" if v is None else f"{v:.6f}" for v in values]


def csv_report(results: Mapping[str, Metrics], categories: Sequence[str] | None = None) -> str:
    """One row per category (every requested one: empty where not run, failed or n/a) and an average row
    (mean over the categories that have the value)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metrics = [metric for metric, _ in TABLES]
    writer.writerow(["category", *metrics])
    for category in ordered([*(categories or []), *results]):
        writer.writerow([category, *_formatted([results.get(category, {}).get(m) for m in metrics])])
    means = [average([results[c].get(m) for c in results]) for m in metrics]
    writer.writerow(["average", *_formatted(means)])
    return buffer.getvalue()


PER_KIND_COLUMNS = ("images", "good_images", "image_auroc", "pixel_auroc")


def per_kind_markdown(kinds: Mapping[str, Mapping[str, Mapping[str, float | int | None]]]) -> str:
    """The results.md section with each category's defect types (category -> type -> per_kind row)."""
    rows = [f"| {category} | {kind} | {row['images']} | {_cell(row['image_auroc'])} | {_cell(row['pixel_auroc'])} |"
            for category, by_kind in kinds.items() for kind, row in by_kind.items()]
    if not rows:
        return ""
    return ("\n## Per defect type\n\nImage AUROC of each defect type against the category's good test images, "
            "pixel AUROC on those images; few images per type make these figures coarse.\n\n"
            "| category | defect type | images | image AUROC | pixel AUROC |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def per_kind_csv(kinds: Mapping[str, Mapping[str, Mapping[str, float | int | None]]]) -> str:
    """category, defect_type, images, good_images, image_auroc, pixel_auroc: one row per defect type."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "defect_type", *PER_KIND_COLUMNS])
    for category, by_kind in kinds.items():
        for kind, row in by_kind.items():
            writer.writerow([category, kind, row["images"], row["good_images"],
                             *_formatted([row["image_auroc"], row["pixel_auroc"]])])
    return buffer.getvalue()


def grid_csv_report(grid: Grid) -> str:
    """setting, seed, category, metrics: one row per cell; then per setting and category the rows
    seed=mean and seed=std over its seeds; then category=average rows: per seed, and their mean and std."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metrics = [metric for metric, _ in TABLES]
    writer.writerow(["setting", "seed", "category", *metrics])
    for label, row in grid.items():
        categories = ordered(list(row))
        for category in categories:
            for seed, values in sorted(row[category].items()):
                writer.writerow([label, seed, category, *_formatted([values.get(m) for m in metrics])])
        for category in categories:
            writer.writerow([label, "mean", category,
                             *_formatted([average(_seed_values(row[category], m)) for m in metrics])])
            writer.writerow([label, "std", category,
                             *_formatted([spread(_seed_values(row[category], m)) for m in metrics])])
        seeds = sorted({s for by_seed in row.values() for s in by_seed})
        per_seed = {m: _seed_averages(row, m) for m in metrics}
        for index, seed in enumerate(seeds):
            writer.writerow([label, seed, "average", *_formatted([per_seed[m][index] for m in metrics])])
        writer.writerow([label, "mean", "average",
                         *_formatted([average([average(_seed_values(row[c], m)) for c in categories])
                                      for m in metrics])])
        writer.writerow([label, "std", "average", *_formatted([spread(per_seed[m]) for m in metrics])])
    return buffer.getvalue()
