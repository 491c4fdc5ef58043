"""Panels, GIFs, result tables and the resumable benchmark."""

from __future__ import annotations

import csv
import io
import json

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from cfa_anomaly import viz
from cfa_anomaly.benchmark import run_benchmark
from cfa_anomaly.config import MVTEC_CATEGORIES, load_config
from cfa_anomaly.report import TABLES, average, column_title, csv_report, grid_report, grid_table, single_row
from cfa_anomaly.thresholds import Thresholds
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_overrides

RESULTS = {
    "grid": {"image_auroc": 0.9, "pixel_auroc": 0.97, "pixel_f1_max": 0.5, "aupro": 0.8, "aupimo": 0.6},
    "bottle": {"image_auroc": 1.0, "pixel_auroc": 0.99, "pixel_f1_max": 0.7, "aupro": None, "aupimo": None},
    "my_part": {"image_auroc": 0.5, "pixel_auroc": 0.6, "pixel_f1_max": 0.1, "aupro": 0.4, "aupimo": 0.3},
}


def markdown_table(results, metric, row_label, categories=None) -> str:
    """The table of one row, as cfa benchmark writes it for one backbone and seed."""
    return grid_table(single_row(results, row_label), metric, categories)


def markdown_report(results, row_label, problems=None, categories=None) -> str:
    """results.md of one backbone and seed, as cfa benchmark writes it."""
    return grid_report(single_row(results, row_label), problems, categories=categories)


def table_cells(table: str) -> tuple[list[str], list[str]]:
    header, _, row = table.splitlines()
    return [c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]


def test_table_has_every_category_and_the_average_is_their_mean():
    header, row = table_cells(markdown_table(RESULTS, "image_auroc", "cfa"))
    assert header[:2] == ["", "Avg"]
    assert header[2:] == ["Grid", "Bottle", "My Part"]  # MVTec order first, then others
    values = [float(v) for v in row[2:]]
    assert float(row[1]) == pytest.approx(np.mean(values), abs=1e-3)


def test_undefined_values_are_shown_and_left_out_of_the_average():
    header, row = table_cells(markdown_table(RESULTS, "aupro", "cfa"))
    assert row[header.index("Bottle")] == "-"
    assert float(row[1]) == pytest.approx((0.8 + 0.4) / 2, abs=1e-3)
    assert average([None, None]) is None


def test_markdown_report_has_four_tables_and_lists_problems():
    text = markdown_report(RESULTS, "cfa", problems={"screw": "skipped: dataset not found"})
    for title in ("Image-Level AUC", "Pixel-Level AUC", "Pixel F1 Score", "AUPRO"):
        assert f"### {title}" in text
    assert "screw: skipped: dataset not found" in text


def test_every_requested_category_is_a_column_in_mvtec_order_with_dashes_where_not_run():
    """A full MVTec AD request of which one category finished: 15 columns, '-' for the 14 others, and the
    line under the table says the average is over Grid alone."""
    results = {"grid": RESULTS["grid"]}
    header, row = table_cells(markdown_table(results, "image_auroc", "cfa", categories=MVTEC_CATEGORIES))
    assert header == ["", "Avg", *(column_title(c) for c in MVTEC_CATEGORIES)]
    assert row[header.index("Grid")] == "0.900" == row[1]
    assert [cell for cell in row[2:] if cell == "-"] == ["-"] * 14
    text = markdown_report(results, "cfa", problems={"bottle": "failed: TrainingError"},
                           categories=MVTEC_CATEGORIES)
    others = ", ".join(column_title(c) for c in MVTEC_CATEGORIES if c != "grid")
    assert f"Avg over 1 of 15 categories (Grid); not run or failed ('-'): {others}\n" in text
    assert text.count("Avg over 1 of 15 categories (Grid)") == len(TABLES)


def test_the_line_under_each_table_names_what_avg_is_over():
    text = markdown_report(RESULTS, "cfa", categories=["grid", "bottle", "my_part", "screw"])
    assert "Avg over 3 of 4 categories (Grid, Bottle, My Part); not run or failed ('-'): Screw" in text
    assert ("Avg over 2 of 4 categories (Grid, My Part); not run or failed ('-'): Screw; undefined ('-'): "
            "Bottle") in text  # AUPRO
    assert "Avg over all 3 categories." in markdown_report(RESULTS, "cfa")
    assert "Avg over the one category." in markdown_report({"grid": RESULTS["grid"]}, "cfa")


def test_csv_report_has_a_row_for_every_requested_category():
    rows = list(csv.reader(io.StringIO(csv_report(RESULTS, categories=["screw", "grid", "bottle", "my_part"]))))
    assert [r[0] for r in rows[1:]] == ["grid", "bottle", "screw", "my_part", "average"]  # MVTec order
    assert rows[3] == ["screw", "", "", "", "", ""]
    assert float(rows[-1][1]) == pytest.approx(np.mean([0.9, 1.0, 0.5]))


def test_benchmark_results_show_every_requested_category(tmp_path):
    """`cfa benchmark` over all 15 MVTec AD categories where only grid is there (finished earlier): results.md
    and results.csv still have all 15, in the original order."""
    root, output = tmp_path / "data", tmp_path / "bench"
    cfg = load_config(None, [f"data.root={root}", "data.category=grid"])
    (output / "grid").mkdir(parents=True)
    (output / "grid" / "metrics.json").write_text(json.dumps({"config": cfg.to_dict(), "metrics": RESULTS["grid"]}))
    summary = run_benchmark(root, output, MVTEC_CATEGORIES, config_dir=None)
    assert summary["status"]["grid"] == "reused" and len(summary["problems"]) == 14
    tables = (output / "results.md").read_text()
    header = tables.split("### Image-Level AUC\n\n")[1].splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [column_title(c) for c in MVTEC_CATEGORIES]
    assert "Avg over 1 of 15 categories (Grid)" in tables
    rows = list(csv.reader(io.StringIO((output / "results.csv").read_text())))
    assert [r[0] for r in rows[1:]] == [*MVTEC_CATEGORIES, "average"]


def test_csv_report_rows_and_average():
    rows = list(csv.reader(io.StringIO(csv_report(RESULTS))))
    assert rows[0] == ["category", "image_auroc", "pixel_auroc", "pixel_f1_max", "aupro", "aupimo"]
    assert [r[0] for r in rows[1:]] == ["grid", "bottle", "my_part", "average"]
    assert float(rows[-1][1]) == pytest.approx(np.mean([0.9, 1.0, 0.5]))


def test_panel_has_one_column_per_view_and_gif_has_the_requested_frames(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    anomaly_map = rng.random((64, 64))
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    with_truth = viz.render_panel(image, anomaly_map, 0.9, Thresholds(image=0.5), (0.0, 1.0), mask, title="a")
    without = viz.render_panel(image, anomaly_map, 0.9, Thresholds(image=0.5), (0.0, 1.0), None, title="b")
    assert with_truth.dtype == np.uint8 and with_truth.shape[2] == 3
    assert with_truth.shape[1] > without.shape[1]  # the ground-truth column is added

    labels = np.array([0, 1, 0, 1, 1, 0, 0])
    order = viz.gif_order(labels, good_frames=2, max_frames=10)
    assert order == [1, 3, 4, 0, 2]  # defective first, then two good ones
    assert viz.gif_order(labels, good_frames=2, max_frames=3) == [1, 0, 2]
    frames = [viz.render_panel(image, anomaly_map * (i + 1), 0.9, Thresholds(image=0.5), (0.0, 5.0), mask, title=str(i))
              for i in range(len(order))]  # distinct frames: GIF writers merge identical ones
    viz.write_gif(tmp_path / "x.gif", frames, max_width=300)
    gif = iio.imread(tmp_path / "x.gif", index=None)
    assert gif.shape[0] == len(order)
    assert gif.shape[2] <= 300
    with Image.open(tmp_path / "x.gif") as handle:
        assert handle.n_frames == len(order)


@requires_mobilenet_weights
def test_benchmark_writes_tables_gifs_and_resumes(synth_root, tmp_path):
    overrides = [o for o in small_overrides(synth_root, **{"train.epochs": "1"}) if not o.startswith("data.")]
    overrides += ["data.resize=72", "data.crop=64", "data.holdout_fraction=0.2"]
    output = tmp_path / "bench"
    summary = run_benchmark(synth_root, output, [SYNTH_CATEGORY, "absent_part"], overrides, config_dir=None)
    assert summary["status"] == {SYNTH_CATEGORY: "done", "absent_part": "skipped"}
    assert "dataset not found" in summary["problems"]["absent_part"]
    metrics_path = output / SYNTH_CATEGORY / "metrics.json"
    report = json.loads(metrics_path.read_text())
    assert report["threshold"]["image"]["images"] == 1  # 20% of 6 training images, held out
    assert report["train"]["images"] == 5
    gif = output / "assets" / f"{SYNTH_CATEGORY}.gif"
    with Image.open(gif) as handle:
        assert handle.n_frames == 4 + 3  # every defective image, then the three good ones (default)
    panels = sorted((output / SYNTH_CATEGORY / "panels").rglob("*.png"))
    assert len(panels) == 7
    for name in ("roc.png", "score_histogram.png"):
        assert (output / SYNTH_CATEGORY / name).stat().st_size > 0
    text = (output / "results.md").read_text()
    assert "Synth" in text and "absent_part" in text
    assert "## Per defect type" in text
    by_kind = list(csv.DictReader(io.StringIO((output / "results_by_kind.csv").read_text())))
    assert {row["defect_type"] for row in by_kind} == set(report["per_kind"])
    for row in by_kind:
        kind = report["per_kind"][row["defect_type"]]
        assert row["category"] == SYNTH_CATEGORY and int(row["images"]) == kind["images"] == 1
        assert float(row["image_auroc"]) == pytest.approx(kind["image_auroc"], abs=1e-6)
        assert f"| {SYNTH_CATEGORY} | {row['defect_type']} | 1 |" in text

    stamp = metrics_path.stat().st_mtime_ns
    again = run_benchmark(synth_root, output, [SYNTH_CATEGORY], overrides, config_dir=None)
    assert again["status"] == {SYNTH_CATEGORY: "reused"}
    assert metrics_path.stat().st_mtime_ns == stamp
    assert again["results"][SYNTH_CATEGORY] == report["metrics"]

    del report["config"]["model"]["compile"]  # as written before the key existed: its default applies
    metrics_path.write_text(json.dumps(report))
    stamp = metrics_path.stat().st_mtime_ns
    older = run_benchmark(synth_root, output, [SYNTH_CATEGORY], overrides, config_dir=None)
    assert older["status"] == {SYNTH_CATEGORY: "reused"}

    changed = run_benchmark(synth_root, output, [SYNTH_CATEGORY], [*overrides, "model.K=2"], config_dir=None)
    assert changed["status"] == {SYNTH_CATEGORY: "skipped"}  # another config: not silently reused
    assert metrics_path.stat().st_mtime_ns == stamp


def test_atomic_writes_replace_whole_files_with_usual_permissions(tmp_path):
    import os
    import stat

    from cfa_anomaly.io_utils import atomic_write, atomic_write_json

    target = tmp_path / "report.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask

    def broken(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind
