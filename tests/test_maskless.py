"""Categories whose defective test images have no masks: image metrics only, pixel metrics None with a note."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SYNTH_CATEGORY, SYNTH_COUNTS, requires_mobilenet_weights, small_config

from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.evaluate import Predictions, compute_test_metrics
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.report import grid_report, single_row

PIXEL_METRICS = ("pixel_auroc", "pixel_f1_max", "aupro")
N_DEFECTIVE = 4 * SYNTH_COUNTS["n_test_per_defect"]


def copy_category(synth_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the synthetic data (root, category folder), free to be cut."""
    root = tmp_path / "data"
    shutil.copytree(synth_root / SYNTH_CATEGORY, root / SYNTH_CATEGORY)
    return root, root / SYNTH_CATEGORY


def run(root: Path, output: Path) -> dict:
    train_and_test(small_config(root, **{"train.epochs": "1"}), output)
    return json.loads((output / "metrics.json").read_text())


def check_outputs(output: Path, report: dict, missing: int) -> None:
    """Image AUROC defined, pixel metrics None with the note, and every file a test run writes."""
    assert report["metrics"]["image_auroc"] is not None
    assert all(report["metrics"][key] is None for key in PIXEL_METRICS)
    note = report["notes"]["pixel_metrics"]
    assert note.startswith("pixel metrics need a mask for every defective test image; "
                           f"{missing} of {N_DEFECTIVE} have none: e.g. ")
    assert report["test"]["defective_without_mask"] == missing
    with open(output / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N_DEFECTIVE + SYNTH_COUNTS["n_test_good"]
    assert len(list((output / "panels").rglob("*.png"))) == len(rows)
    for name in (f"{SYNTH_CATEGORY}.gif", "roc.png", "score_histogram.png"):
        assert (output / name).stat().st_size > 0


@requires_mobilenet_weights
def test_category_without_ground_truth_trains_and_tests(synth_root, tmp_path):
    root, category = copy_category(synth_root, tmp_path)
    shutil.rmtree(category / "ground_truth")
    report = run(root, tmp_path / "out")
    check_outputs(tmp_path / "out", report, missing=N_DEFECTIVE)
    assert f"{category / 'test'}" in report["notes"]["pixel_metrics"]


@requires_mobilenet_weights
def test_one_defect_type_without_masks_gives_no_pixel_metrics_on_the_partial_set(synth_root, tmp_path):
    root, category = copy_category(synth_root, tmp_path)
    shutil.rmtree(category / "ground_truth" / "hole")
    report = run(root, tmp_path / "out")
    check_outputs(tmp_path / "out", report, missing=SYNTH_COUNTS["n_test_per_defect"])
    assert str(category / "test" / "hole") in report["notes"]["pixel_metrics"]
    # the benchmark table shows the undefined values and says what its averages are over
    results = {SYNTH_CATEGORY: report["metrics"], "grid": dict.fromkeys(report["metrics"], 0.9)}
    text = grid_report(single_row(results, "cfa"))
    assert "| cfa | 0.900 | 0.900 | - |" in text
    assert "Avg over 1 of 2 categories (Grid); undefined ('-'): Synth" in text


def test_a_single_missing_mask_in_a_ground_truth_folder_is_still_an_error(synth_root, tmp_path):
    root, category = copy_category(synth_root, tmp_path)
    (category / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        train_and_test(small_config(root), tmp_path / "out")
    assert str(category / "test" / "scratch" / "000.png") in str(err.value)


def test_pixel_metrics_are_never_computed_on_a_partial_set():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    predictions = Predictions(paths=["good/0.png", "cut/1.png", "hole/2.png"], scores=rng.random(3),
                              maps=rng.random((3, 8, 8)), images_per_second=1.0, labels=np.array([0, 1, 1]),
                              masks=masks, mask_known=np.array([True, True, False]))
    results = compute_test_metrics(predictions)
    assert results["image_auroc"] is not None and all(results[key] is None for key in PIXEL_METRICS)
    assert predictions.pixel_metrics_note().endswith("1 of 2 have none: e.g. hole/2.png")
    assert np.array_equal(predictions.mask_of(1), masks[1])
    assert predictions.mask_of(2) is None and predictions.pixel_masks() is None
    predictions.mask_known = None  # every mask known (the default): the pixel metrics are computed
    assert compute_test_metrics(predictions)["pixel_auroc"] is not None
    assert predictions.pixel_metrics_note() is None
