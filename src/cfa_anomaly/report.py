"""Result tables over categories: Markdown in the original project's format, and CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

from cfa_anomaly.config import MVTEC_CATEGORIES

TABLES: tuple[tuple[str, str], ...] = (
    ("image_auroc", "Image-Level AUC"),
    ("pixel_auroc", "Pixel-Level AUC"),
    ("pixel_f1_max", "Pixel F1 Score"),
    ("aupro", "AUPRO (FPR <= 0.3)"),
)


def column_title(category: str) -> str:
    """'metal_nut' -> 'Metal Nut' (the original tables' headers)."""
    return " ".join(part.capitalize() for part in category.split("_"))


def ordered(categories: Sequence[str]) -> list[str]:
    """MVTec AD categories in the original tables' order, then any others alphabetically (each once)."""
    known = [c for c in MVTEC_CATEGORIES if c in categories]
    return known + sorted({c for c in categories if c not in MVTEC_CATEGORIES})


def _columns(results: Mapping[str, Mapping[str, float | None]], categories: Sequence[str] | None) -> list[str]:
    """The table's categories: every requested one (run or not), else those with results; in order."""
    return ordered([*(categories if categories is not None else []), *results])


def average(values: Sequence[float | None]) -> float | None:
    """Mean over the defined values; None when there are none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def coverage_line(results: Mapping[str, Mapping[str, float | None]], metric: str,
                  categories: Sequence[str] | None = None) -> str:
    """Which categories the table's Avg is over: 'Avg over all n categories', or 'Avg over k of n categories
    (A, B); not run or failed ('-'): C; undefined ('-'): D'."""
    columns = _columns(results, categories)
    included = [column_title(c) for c in columns if results.get(c, {}).get(metric) is not None]
    missing = [column_title(c) for c in columns if c not in results]
    undefined = [column_title(c) for c in columns if c in results and results[c].get(metric) is None]
    if len(included) == len(columns):
        return f"Avg over all {len(columns)} categories." if len(columns) > 1 else "Avg over the one category."
    parts = [f"Avg over {len(included)} of {len(columns)} categories ({', '.join(included)})" if included
             else f"No Avg: none of the {len(columns)} categories has the value"]
    if missing:
        parts.append(f"not run or failed ('-'): {', '.join(missing)}")
    if undefined:
        parts.append(f"undefined ('-'): {', '.join(undefined)}")
    return "; ".join(parts)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(results: Mapping[str, Mapping[str, float | None]], metric: str, row_label: str,
                   categories: Sequence[str] | None = None) -> str:
    """One table: a column per category (every requested one: '-' where it has no result) plus the average
    of the defined ones."""
    categories = _columns(results, categories)
    values = [results.get(c, {}).get(metric) for c in categories]
    header = "| | Avg | " + " | ".join(column_title(c) for c in categories) + " |"
    rule = "| --- | :---: | " + " | ".join(":---:" for _ in categories) + " |"
    row = f"| {row_label} | {_cell(average(values))} | " + " | ".join(_cell(v) for v in values) + " |"
    return "\n".join((header, rule, row))


def markdown_report(results: Mapping[str, Mapping[str, float | None]], row_label: str,
                    problems: Mapping[str, str] | None = None, preamble: str = "",
                    categories: Sequence[str] | None = None) -> str:
    """All four tables, a column for every requested category (categories; default: those with results);
    categories that did not finish show '-' and are listed, not dropped silently."""
    parts = ["# Results", ""]
    if preamble:
        parts += [preamble, ""]
    for metric, title in TABLES:
        parts += [f"### {title}", "", markdown_table(results, metric, row_label, categories), "",
                  coverage_line(results, metric, categories), ""]
    parts.append("'-' is a category that was not run or failed (see Not included), or an undefined value "
                 "(n/a), e.g. the pixel metrics of a category whose defective test images lack masks (its "
                 "metrics.json notes say why). Avg is the mean over the categories that have the value; the "
                 "line under each table names them. Pixel F1 is the best F1 over thresholds on the test set "
                 "(test-fitted).")
    if problems:
        parts += ["", "### Not included", ""]
        parts += [f"- {category}: {reason}" for category, reason in sorted(problems.items())]
    return "\n".join(parts) + "\n"


def csv_report(results: Mapping[str, Mapping[str, float | None]], categories: Sequence[str] | None = None) -> str:
    """One row per category (every requested one: empty where not run, failed or n/a) and an average row
    (mean over the categories that have the value)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metrics = [metric for metric, _ in TABLES]
    writer.writerow(["category", *metrics])
    for category in _columns(results, categories):
        row = results.get(category, {})
        writer.writerow([category, *("" if row.get(m) is None else f"{row[m]:.6f}" for m in metrics)])
    means = [average([results[c].get(m) for c in results]) for m in metrics]
    writer.writerow(["average", *("" if mean is None else f"{mean:.6f}" for mean in means)])
    return buffer.getvalue()
