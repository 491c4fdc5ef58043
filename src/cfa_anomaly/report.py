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
    """MVTec AD categories in the original tables' order, then any others alphabetically."""
    known = [c for c in MVTEC_CATEGORIES if c in categories]
    return known + sorted(c for c in categories if c not in MVTEC_CATEGORIES)


def average(values: Sequence[float | None]) -> float | None:
    """Mean over the defined values; None when there are none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def coverage_line(results: Mapping[str, Mapping[str, float | None]], metric: str) -> str:
    """'Avg over n of m categories; undefined: A, B' when some category lacks the value, else ''."""
    categories = ordered(list(results))
    undefined = [column_title(c) for c in categories if results[c].get(metric) is None]
    if not undefined or len(undefined) == len(categories):
        return ""
    return (f"Avg over {len(categories) - len(undefined)} of {len(categories)} categories; undefined ('-'): "
            f"{', '.join(undefined)}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(results: Mapping[str, Mapping[str, float | None]], metric: str, row_label: str) -> str:
    """One table: a column per category plus the average of the defined ones."""
    categories = ordered(list(results))
    values = [results[c].get(metric) for c in categories]
    header = "| | Avg | " + " | ".join(column_title(c) for c in categories) + " |"
    rule = "| --- | :---: | " + " | ".join(":---:" for _ in categories) + " |"
    row = f"| {row_label} | {_cell(average(values))} | " + " | ".join(_cell(v) for v in values) + " |"
    return "\n".join((header, rule, row))


def markdown_report(results: Mapping[str, Mapping[str, float | None]], row_label: str,
                    problems: Mapping[str, str] | None = None, preamble: str = "") -> str:
    """All four tables; categories that did not finish are listed, not dropped silently."""
    parts = ["# Results", ""]
    if preamble:
        parts += [preamble, ""]
    for metric, title in TABLES:
        parts += [f"### {title}", "", markdown_table(results, metric, row_label), ""]
        coverage = coverage_line(results, metric)
        if coverage:
            parts += [coverage, ""]
    parts.append("'-' is undefined (n/a), e.g. the pixel metrics of a category whose defective test images "
                 "lack masks (its metrics.json notes say why). Avg is the mean over the categories that have "
                 "the value; under a table, how many those are when some lack it. Pixel F1 is the best F1 over "
                 "thresholds on the test set (test-fitted).")
    if problems:
        parts += ["", "### Not included", ""]
        parts += [f"- {category}: {reason}" for category, reason in sorted(problems.items())]
    return "\n".join(parts) + "\n"


def csv_report(results: Mapping[str, Mapping[str, float | None]]) -> str:
    """One row per category and an average row (mean over the categories that have the value; empty: n/a)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metrics = [metric for metric, _ in TABLES]
    writer.writerow(["category", *metrics])
    for category in ordered(list(results)):
        writer.writerow([category, *("" if results[category].get(m) is None else f"{results[category][m]:.6f}"
                                     for m in metrics)])
    means = [average([results[c].get(m) for c in results]) for m in metrics]
    writer.writerow(["average", *("" if mean is None else f"{mean:.6f}" for mean in means)])
    return buffer.getvalue()
