"""data.layout=mvtec_ad_2: MVTec AD 2 read as it ships (its validation images the hold-out), end to end, a
damaged tree refused by name, and the evaluation server's submission structure for the private sets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SYNTH_CATEGORY, SYNTH_COUNTS, has_module, requires_mobilenet_weights, small_config
from layouts import make_mvtec_ad_2
from PIL import Image

from cfa_anomaly import runfiles
from cfa_anomaly.data.mvtec_ad_2 import mvtec_ad_2_samples, validation_samples
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.inference import Predictor
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import training_split


@pytest.fixture(scope="module")
def ad2_root(synth_root, tmp_path_factory):
    return make_mvtec_ad_2(synth_root, SYNTH_CATEGORY, tmp_path_factory.mktemp("mvtec_ad_2"))


def test_training_hold_out_and_public_test_come_from_their_folders(ad2_root):
    cfg = small_config(ad2_root, **{"data.layout": "mvtec_ad_2", "data.category": "can"})
    train, holdout = training_split(cfg)
    assert [s.image.parent.name for s in train] == ["good"] * (SYNTH_COUNTS["n_train"] - 3)
    assert [s.image for s in holdout] == [s.image for s in validation_samples(ad2_root, "can")]
    test = mvtec_ad_2_samples(ad2_root, "can", "test")
    bad = [s for s in test if s.label]
    assert len(bad) == 4 * SYNTH_COUNTS["n_test_per_defect"] and all(s.mask for s in bad)
    assert len(test) - len(bad) == SYNTH_COUNTS["n_test_good"]


@pytest.mark.parametrize(("damage", "message"), [
    ("can/validation", "validation/good not found"),
    ("can/test_public/ground_truth", "ground_truth/bad not found"),
    ("can/test_public/ground_truth/bad/000_regular_mask.png", "no mask for"),
])
def test_a_damaged_tree_is_refused_naming_the_folder(ad2_root, tmp_path, damage, message):
    copy = tmp_path / "ad2"
    shutil.copytree(ad2_root, copy)
    target = copy / damage
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match=message):  # indexing what a run reads: the hold-out, the test
        validation_samples(copy, "can")
        mvtec_ad_2_samples(copy, "can", "test")
    with pytest.raises(DatasetError, match="fabric not found"):
        mvtec_ad_2_samples(copy, "fabric", "train")


@requires_mobilenet_weights
@pytest.mark.skipif(not has_module("tifffile"), reason="tifffile not installed (extra [mvtec-ad-2])")
def test_an_object_trains_tests_and_writes_the_private_sets_for_the_server(ad2_root, tmp_path):
    import tifffile

    from cfa_anomaly.submission import write_mvtec_ad_2_submission

    cfg = small_config(ad2_root, **{"data.layout": "mvtec_ad_2", "data.category": "can"})
    report = train_and_test(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["pixel_auroc"] > 0.8
    assert report["threshold"]["image"]["images"] == 3  # the validation images set the threshold
    predictor = Predictor.from_checkpoint(tmp_path / "run" / runfiles.CHECKPOINT, device="cpu")
    out = tmp_path / "submission"
    assert write_mvtec_ad_2_submission(predictor, ad2_root, "can", out) == {"test_private": 3,
                                                                             "test_private_mixed": 3}
    for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
        images = sorted((ad2_root / "can" / split).iterdir())
        maps = sorted((out / "anomaly_images" / "can" / split).iterdir())
        masks = sorted((out / "anomaly_images_thresholded" / "can" / split).iterdir())
        assert [p.name for p in maps] == [f"{i:03d}_{suffix}.tiff" for i in range(3)]
        assert [p.stem for p in masks] == [p.stem for p in images]
        for image, map_path, mask_path in zip(images, maps, masks):
            continuous, binary = tifffile.imread(map_path), np.asarray(Image.open(mask_path))
            assert continuous.dtype == np.float16 and continuous.shape == Image.open(image).size[::-1]
            assert binary.shape == continuous.shape and set(np.unique(binary)) <= {0, 255}
