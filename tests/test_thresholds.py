"""Thresholds from held-out normal images: the pixel threshold (outlines, defect masks) and quantiles taken
again from the stored held-out scores, through the Predictor, `cfa predict` and exported models."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cfa_anomaly import cli
from cfa_anomaly.checkpoint import read_checkpoint
from cfa_anomaly.config import ConfigError
from cfa_anomaly.data.samples import list_images
from cfa_anomaly.evaluate import predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.inference.export import export_checkpoint
from cfa_anomaly.pipeline import CHECKPOINT_NAME, _loader_of, train_and_test, training_split

from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config

pytestmark = requires_mobilenet_weights


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A tiny model trained and tested with a 20% hold-out; its config and output folder."""
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.2"})
    output = tmp_path_factory.mktemp("thresholds")
    train_and_test(cfg, output)
    return cfg, output


@pytest.fixture(scope="module")
def test_images(synth_root) -> list[Path]:
    test = synth_root / SYNTH_CATEGORY / "test"
    return [p for folder in sorted(test.iterdir()) for p in list_images(folder)]


def test_both_thresholds_come_from_the_held_out_normal_images(trained):
    cfg, output = trained
    record = read_checkpoint(output / CHECKPOINT_NAME)[1]["extra"]["threshold"]
    predictor = Predictor.from_checkpoint(output / CHECKPOINT_NAME, device="cpu")
    held = predict(predictor, _loader_of(training_split(cfg)[1], cfg), desc="holdout")
    assert len(record["holdout_scores"]) == len(held.scores) == record["images"]
    np.testing.assert_allclose(record["holdout_scores"], held.scores, rtol=1e-5)
    assert record["value"] == pytest.approx(np.quantile(held.scores, cfg.evaluation.threshold_quantile), rel=1e-5)
    pixel = record["pixel"]
    assert pixel["quantile"] == cfg.evaluation.pixel_threshold_quantile
    assert pixel["value"] == pytest.approx(np.quantile(held.maps, pixel["quantile"]), rel=1e-5)
    assert predictor.pixel_threshold == pytest.approx(pixel["value"])
    # about 1 held-out normal pixel in 1000 reaches it
    assert (held.maps >= pixel["value"]).mean() == pytest.approx(1 - pixel["quantile"], abs=5e-4)


def test_quantile_is_taken_again_from_the_stored_scores(trained):
    cfg, output = trained
    predictor = Predictor.from_checkpoint(output / CHECKPOINT_NAME, device="cpu")
    same = predictor.with_quantile(cfg.evaluation.threshold_quantile)
    assert same.threshold == pytest.approx(predictor.threshold)
    scores = np.asarray(predictor.card.holdout_scores)
    assert predictor.with_quantile(0.5).threshold == pytest.approx(np.quantile(scores, 0.5))
    assert predictor.with_quantile(1.0).threshold == pytest.approx(scores.max())
    assert "quantile 0.5" in predictor.with_quantile(0.5).card.threshold_source
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="quantile"):
            predictor.with_quantile(bad)


def test_a_model_without_a_hold_out_refuses_a_quantile(synth_root, tmp_path):
    train_and_test(small_config(synth_root, **{"data.holdout_fraction": "0"}), tmp_path, run_test=False)
    predictor = Predictor.from_checkpoint(tmp_path / CHECKPOINT_NAME, device="cpu")
    assert predictor.threshold is None and predictor.pixel_threshold is None
    with pytest.raises(ConfigError, match="--threshold"):
        predictor.with_quantile(0.9)


def test_defect_masks_follow_the_pixel_threshold(trained, test_images):
    _, output = trained
    predictor = Predictor.from_checkpoint(output / CHECKPOINT_NAME, device="cpu")
    result = predictor.predict(test_images)
    masks = result.defect_masks()
    assert [m.shape for m in masks] == [m.shape for m in result.input_maps]
    for mask, anomaly_map in zip(masks, result.input_maps):
        np.testing.assert_array_equal(mask, anomaly_map >= predictor.pixel_threshold)
    low, high = (predictor.with_pixel_threshold(float(np.quantile(result.maps, q)), "test").predict(test_images)
                 for q in (0.2, 0.8))
    for wide, narrow in zip(low.defect_masks(), high.defect_masks()):
        assert not (narrow & ~wide).any()  # a higher threshold outlines a subset
    assert sum(m.sum() for m in low.defect_masks()) > sum(m.sum() for m in high.defect_masks())


def test_predict_writes_defect_masks_and_areas_at_the_pixel_threshold(trained, test_images, tmp_path):
    _, output = trained
    checkpoint = output / CHECKPOINT_NAME
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    reference = predictor.predict(test_images)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, path in enumerate(test_images):
        shutil.copyfile(path, folder / f"{index:02d}{path.suffix}")
    level = float(np.quantile(reference.maps, 0.9))
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--pixel-threshold", str(level),
                     "--output", str(tmp_path / "out"), "--panels", "none", str(folder)]) == 0
    with np.load(tmp_path / "out" / "maps.npz") as saved:
        assert float(saved["pixel_threshold"]) == pytest.approx(level)
        np.testing.assert_array_equal(saved["defect_masks"], reference.maps >= level)
        areas = saved["defect_masks"].mean(axis=(1, 2))
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["defect_area"]) for r in rows], areas, atol=1e-3)


def test_cli_quantile_decides_at_that_quantile_and_excludes_threshold(trained, test_images, tmp_path):
    _, output = trained
    checkpoint = output / CHECKPOINT_NAME
    scores = Predictor.from_checkpoint(checkpoint, device="cpu").predict(test_images).scores
    folder = test_images[0].parent
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--quantile", "0.01",
                     "--output", str(tmp_path / "q"), "--panels", "none", str(folder)]) == 0
    low = np.quantile(np.asarray(Predictor.from_checkpoint(checkpoint, device="cpu").card.holdout_scores), 0.01)
    with open(tmp_path / "q" / "scores.csv", newline="") as handle:
        decisions = [row["decision"] for row in csv.DictReader(handle)]
    expected = ["defective" if s >= low else "good" for s in scores[: len(decisions)]]
    assert decisions == expected
    with pytest.raises(SystemExit):  # argparse: --threshold and --quantile exclude each other
        cli.main(["predict", "--checkpoint", str(checkpoint), "--threshold", "1", "--quantile", "0.5",
                  "--output", str(tmp_path / "both"), str(folder)])


def test_test_report_gives_the_pixel_outcome_at_the_held_out_pixel_threshold(trained):
    _, output = trained
    at = json.loads((output / "metrics.json").read_text())["at_threshold"]
    with np.load(output / "maps.npz") as saved:
        assert float(saved["pixel_threshold"]) == pytest.approx(at["pixel_threshold"])
    for key in ("pixel_precision", "pixel_recall", "pixel_f1"):
        assert 0.0 <= at[key] <= 1.0


def test_exported_model_keeps_both_thresholds_and_old_exports_still_load(trained, tmp_path):
    _, output = trained
    checkpoint = output / CHECKPOINT_NAME
    export_checkpoint(checkpoint, "torchscript", tmp_path / "model")
    exported = Predictor.from_export(tmp_path / "model")
    original = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert exported.pixel_threshold == original.pixel_threshold
    assert exported.card.holdout_scores == original.card.holdout_scores
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    for key in ("pixel_threshold", "pixel_threshold_source", "holdout_scores"):  # as older exports wrote it
        del metadata["card"][key]
    (tmp_path / "model" / "model.json").write_text(json.dumps(metadata))
    older = Predictor.from_export(tmp_path / "model")
    assert older.pixel_threshold == older.threshold == original.threshold  # outlines at the image threshold
