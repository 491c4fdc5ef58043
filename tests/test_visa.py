"""data.layout=visa: VisA read as it ships (split CSV, per-object tree, 0/1 masks), end to end, and a damaged
tree refused with the file named."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import SYNTH_CATEGORY, SYNTH_COUNTS, requires_mobilenet_weights, small_config
from layouts import make_visa

from cfa_anomaly.data.images import read_mask
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.data.visa import visa_samples
from cfa_anomaly.pipeline import train_and_test


@pytest.fixture(scope="module")
def visa_root(synth_root, tmp_path_factory):
    return make_visa(synth_root, SYNTH_CATEGORY, tmp_path_factory.mktemp("visa"))


def test_the_splits_are_the_csv_s_rows_with_their_masks(visa_root):
    train, test = visa_samples(visa_root, "candle", "train"), visa_samples(visa_root, "candle", "test")
    assert len(train) == SYNTH_COUNTS["n_train"] and not any(s.label for s in train)
    assert [s.label for s in test] == sorted(s.label for s in test)  # the good ones first
    defective = [s for s in test if s.label]
    assert len(defective) == 4 * SYNTH_COUNTS["n_test_per_defect"] and all(s.mask for s in defective)
    assert {s.defect_type for s in defective} == {"anomaly"}
    assert all(read_mask(s.mask).any() for s in defective)  # 0/1 masks read as defects


@requires_mobilenet_weights
def test_a_visa_object_trains_and_tests_end_to_end(visa_root, tmp_path):
    cfg = small_config(visa_root, **{"data.layout": "visa", "data.category": "candle"})
    report = train_and_test(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics == report["metrics"] and metrics["image_auroc"] is not None
    assert metrics["pixel_auroc"] > 0.8
    assert report["test"]["defective"] == 4 * SYNTH_COUNTS["n_test_per_defect"]


def rewrite(root, edit) -> None:
    path = root / "split_csv" / "1cls.csv"
    rows = list(csv.reader(open(path, newline="")))
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(edit(rows))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda root: (root / "split_csv" / "1cls.csv").unlink(), "1cls.csv not found"),
    (lambda root: rewrite(root, lambda rows: [r[:4] for r in rows]), "lacks the column"),
    (lambda root: rewrite(root, lambda rows: rows[:-1] + [[*rows[-1][:2], "bad", *rows[-1][3:]]]),
     r"line \d+: label 'bad'"),
    (lambda root: (root / "candle" / "Data" / "Images" / "Anomaly" / "000.JPG").unlink(),
     "000.JPG not found"),
    (lambda root: (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink(), "001.png not found"),
])
def test_a_damaged_tree_is_refused_naming_the_file(visa_root, tmp_path, damage, message):
    import shutil

    copy = tmp_path / "visa"
    shutil.copytree(visa_root, copy)
    damage(copy)
    with pytest.raises(DatasetError, match=message):
        visa_samples(copy, "candle", "test")


def test_an_object_the_csv_does_not_list_is_named_with_those_it_has(visa_root):
    with pytest.raises(DatasetError, match="'pcb1'.*it has: candle"):
        visa_samples(visa_root, "pcb1", "train")
    assert np.all([s.image.suffix == ".JPG" for s in visa_samples(visa_root, "candle", "train")])


@requires_mobilenet_weights
def test_cfa_benchmark_dataset_visa_runs_the_set_s_objects_in_the_seed_s_table_format(visa_root, tmp_path):
    from conftest import small_overrides

    from cfa_anomaly import cli

    overrides = [o for o in small_overrides(visa_root) if not o.startswith(("data.root", "data.category"))]
    args = ["benchmark", "--dataset", "visa", "--root", str(visa_root), "--categories", "candle",
            "--output", str(tmp_path / "bench"), "--no-report", "--config-dir", str(tmp_path)]
    assert cli.main([*args, *(item for o in overrides for item in ("--set", o))]) == 0
    tables = (tmp_path / "bench" / "results.md").read_text()
    header = tables.split("### Image-Level AUC\n\n")[1].splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["", "Avg", "Candle"]
    row = next(r for r in csv.reader(open(tmp_path / "bench" / "results.csv")) if r[0] == "candle")
    assert float(row[2]) > 0.8  # pixel AUROC
