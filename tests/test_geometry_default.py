"""A user's own images are scored whole by default: a defect touching the border is inspected, while the
MVTec AD configs keep the paper's centre crop as a named benchmark convention."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights
from PIL import Image

from cfa_anomaly import cli
from cfa_anomaly.config import load_config
from cfa_anomaly.data.images import mask_to_tensor
from cfa_anomaly.inference import Predictor

MVTEC_CONFIG = Path(__file__).resolve().parents[1] / "configs/anomaly/unsupervised/cfa/grid.yaml"


def border_defect(normal: Path, image_path: Path, mask_path: Path) -> np.ndarray:
    """A copy of a normal image with a dark bar along its top edge (rows 0-4); writes image and mask."""
    rgb = np.asarray(Image.open(normal).convert("RGB")).copy()
    mask = np.zeros(rgb.shape[:2], bool)
    mask[:5, rgb.shape[1] // 4: rgb.shape[1] // 2] = True
    rgb[mask] = 0
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_path)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    return mask


def test_default_geometry_keeps_a_border_defect_that_the_benchmark_crop_drops(tmp_path):
    mask = np.zeros((96, 96), bool)
    mask[:5, 24:48] = True
    default = load_config(None, ["data.layout=folder", f"data.normal_dir={tmp_path}"]).data
    assert default.crop == default.resize and not default.keep_aspect
    kept = mask_to_tensor(mask, default.resize, default.crop)
    assert kept.sum() == pytest.approx(mask.mean() * default.crop ** 2, rel=0.1)
    benchmark = load_config(MVTEC_CONFIG).data
    assert (benchmark.resize, benchmark.crop) == (256, 224)
    assert not mask_to_tensor(mask, benchmark.resize, benchmark.crop).any()  # the paper's crop never sees it


@requires_mobilenet_weights
def test_a_folder_layout_run_scores_a_defect_on_the_border(synth_root, tmp_path):
    normal = tmp_path / "normal"
    shutil.copytree(synth_root / SYNTH_CATEGORY / "train" / "good", normal)
    good_test = tmp_path / "normal_test"
    shutil.copytree(synth_root / SYNTH_CATEGORY / "test" / "good", good_test)
    source = sorted(good_test.iterdir())[0]
    mask = border_defect(source, tmp_path / "abnormal" / "edge.png", tmp_path / "masks" / "edge.png")
    assert cli.main(["train", "--normal-dir", str(normal), "--normal-test-dir", str(good_test),
                     "--abnormal-dir", str(tmp_path / "abnormal"), "--mask-dir", str(tmp_path / "masks"),
                     "--output", str(tmp_path / "run"), "--set", "model.backbone=mobilenet_v2",
                     "--set", "train.epochs=2", "--set", "train.device=cpu", "--set", "data.holdout_fraction=0.5",
                     "--set", "evaluation.panels=false"]) == 0
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["config"]["data"]["crop"] == report["config"]["data"]["resize"]
    assert "whole image scored" in report["geometry"]
    assert report["metrics"]["pixel_auroc"] is not None  # the border defect's pixels are in the scored grid
    predictor = Predictor.load(tmp_path / "run" / "checkpoint.pt", device="cpu")
    result = predictor.predict([tmp_path / "abnormal" / "edge.png", source])
    on_input = result.input_maps[0]
    assert on_input.shape == mask.shape
    # the defect's rows carry the model's own scores, not the edge values copied into an unseen border
    assert on_input[mask].mean() > result.input_maps[1][mask].mean()
