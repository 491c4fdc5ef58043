"""data.layout=btad and data.layout=loco: BTAD's ok/ko tree and MVTec LOCO AD's validation set and
per-defect mask folders, read as they ship, end to end, and damaged trees refused by name."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import SYNTH_CATEGORY, SYNTH_COUNTS, requires_mobilenet_weights, small_config
from layouts import make_btad, make_loco

from cfa_anomaly.data.btad import btad_samples
from cfa_anomaly.data.images import read_mask, unreadable
from cfa_anomaly.data.loco import loco_samples
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import training_split

DEFECTIVE = 4 * SYNTH_COUNTS["n_test_per_defect"]


@pytest.fixture(scope="module")
def btad_root(synth_root, tmp_path_factory):
    return make_btad(synth_root, SYNTH_CATEGORY, tmp_path_factory.mktemp("btad"))


@pytest.fixture(scope="module")
def loco_root(synth_root, tmp_path_factory):
    return make_loco(synth_root, SYNTH_CATEGORY, tmp_path_factory.mktemp("loco"))


def test_btad_ok_images_are_good_and_ko_ones_defective_with_their_masks(btad_root):
    train, test = btad_samples(btad_root, "01", "train"), btad_samples(btad_root, "01", "test")
    assert len(train) == SYNTH_COUNTS["n_train"] and {s.defect_type for s in train} == {"good"}
    assert sorted({(s.defect_type, s.label) for s in test}) == [("good", 0), ("ko", 1)]
    assert all(s.mask is not None and s.mask.name == s.image.with_suffix(".png").name for s in test if s.label)


def test_loco_masks_are_the_union_of_each_defect_s_file_and_validation_is_the_hold_out(loco_root):
    test = loco_samples(loco_root, "pushpins", "test")
    defective = [s for s in test if s.label]
    assert len(defective) == DEFECTIVE and {s.defect_type for s in defective} == {"logical_anomalies",
                                                                                   "structural_anomalies"}
    several = [s for s in defective if len(list(s.mask.iterdir())) > 1]
    assert several  # the case under test occurs
    for sample in several:
        parts = [read_mask(p) for p in sorted(sample.mask.iterdir())]
        np.testing.assert_array_equal(read_mask(sample.mask), np.logical_or.reduce(parts))
        assert unreadable(sample.mask) is None
    cfg = small_config(loco_root, **{"data.layout": "loco", "data.category": "pushpins"})
    train, holdout = training_split(cfg)
    assert len(holdout) == 3 and all(s.image.parent.parent.name == "validation" for s in holdout)
    assert len(train) == SYNTH_COUNTS["n_train"] - 3


@requires_mobilenet_weights
@pytest.mark.parametrize("layout", ["btad", "loco"])
def test_each_layout_trains_and_tests_end_to_end(btad_root, loco_root, tmp_path, layout):
    root, category = (btad_root, "01") if layout == "btad" else (loco_root, "pushpins")
    report = train_and_test(small_config(root, **{"data.layout": layout, "data.category": category}), tmp_path)
    assert report["test"]["defective"] == DEFECTIVE and report["metrics"]["pixel_auroc"] > 0.8
    assert set(report["per_kind"]) == ({"ko"} if layout == "btad" else {"logical_anomalies",
                                                                         "structural_anomalies"})


def test_damaged_trees_are_refused_naming_what_is_missing(btad_root, loco_root, tmp_path):
    loco = tmp_path / "loco"
    shutil.copytree(loco_root, loco)
    first = sorted((loco / "pushpins" / "ground_truth" / "logical_anomalies").iterdir())[0]
    shutil.rmtree(first)
    with pytest.raises(DatasetError, match=f"no masks for .*{first.name}.png"):
        loco_samples(loco, "pushpins", "test")
    shutil.rmtree(loco / "pushpins" / "validation")
    cfg = small_config(loco, **{"data.layout": "loco", "data.category": "pushpins"})
    with pytest.raises(DatasetError, match="validation/good not found"):
        training_split(cfg)
    btad = tmp_path / "btad"
    shutil.copytree(btad_root, btad)
    (btad / "01" / "ground_truth" / "ko" / "0000.png").unlink()
    with pytest.raises(DatasetError, match="no mask for .*0000.bmp"):
        btad_samples(btad, "01", "test")
