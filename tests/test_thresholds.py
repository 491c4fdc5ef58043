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
from cfa_anomaly.data.dataset import image_loader
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import training_split

from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config

pytestmark = requires_mobilenet_weights


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A tiny model trained and tested with 3 of its 6 normal images held out; its config and output folder."""
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.5"})
    output = tmp_path_factory.mktemp("thresholds")
    train_and_test(cfg, output)
    return cfg, output


@pytest.fixture(scope="module")
def test_images(synth_root) -> list[Path]:
    test = synth_root / SYNTH_CATEGORY / "test"
    return [p for folder in sorted(test.iterdir()) for p in list_images(folder)]


def test_both_thresholds_come_from_the_held_out_normal_images(trained):
    cfg, output = trained
    record = read_checkpoint(output / runfiles.CHECKPOINT)[1]["extra"]["threshold"]
    predictor = Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu")
    held = predict(predictor, image_loader(training_split(cfg)[1], cfg), desc="holdout")
    image, pixel = record["image"], record["pixel"]
    assert len(record["holdout_scores"]) == len(held.scores) == image["images"] == 3
    np.testing.assert_allclose(record["holdout_scores"], held.scores, rtol=1e-5)
    # 3 held-out images cannot support the 0.99 quantile: the threshold is their highest score, and it says so
    assert image["value"] == pytest.approx(held.scores.max(), rel=1e-5)
    assert image["supported"] is False and image["expected_false_alarm_rate"] == pytest.approx(1 / 4)
    assert "cannot support" in image["statement"]
    quantile_level, relative = pixel["candidates"]["quantile"]
    assert relative == 0.0
    assert quantile_level == pytest.approx(np.quantile(held.maps, cfg.evaluation.pixel_threshold_quantile), rel=1e-5)
    # the default method outlines from that level, a calibrated fraction of the way to each image's peak
    assert pixel["method"] == "synthetic-peak"
    assert set(pixel["candidates"]) == {"quantile", "synthetic-f1", "synthetic-peak"}
    assert pixel["value"] == pytest.approx(quantile_level) and 0.0 <= pixel["relative_to_peak"] < 1.0
    assert predictor.pixel_threshold == pytest.approx(pixel["value"])
    assert predictor.thresholds.pixel_relative == pytest.approx(pixel["relative_to_peak"])


def test_quantile_is_taken_again_from_the_stored_scores(trained):
    cfg, output = trained
    predictor = Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu")
    same = predictor.with_quantile(cfg.evaluation.threshold_quantile)
    assert same.threshold == pytest.approx(predictor.threshold)
    scores = np.sort(np.asarray(predictor.thresholds.holdout_scores))
    # conformal: the ceil((n + 1) q)-th smallest of n = 3 scores: q = 0.5 the 2nd, q = 0.2 the 1st
    assert predictor.with_quantile(0.5).threshold == pytest.approx(scores[1])
    assert predictor.with_quantile(0.2).threshold == pytest.approx(scores[0])
    assert predictor.with_quantile(1.0).threshold == pytest.approx(scores.max())
    assert "quantile 0.5" in predictor.with_quantile(0.5).thresholds.image_source
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="quantile"):
            predictor.with_quantile(bad)


def test_a_model_without_a_hold_out_refuses_a_quantile(synth_root, tmp_path):
    train_and_test(small_config(synth_root, **{"data.holdout_fraction": "0"}), tmp_path, run_test=False)
    predictor = Predictor.from_checkpoint(tmp_path / runfiles.CHECKPOINT, device="cpu")
    assert predictor.threshold is None and predictor.pixel_threshold is None
    with pytest.raises(ConfigError, match="--threshold"):
        predictor.with_quantile(0.9)


def test_defect_masks_tell_the_decisions_story(trained, test_images):
    _, output = trained
    predictor = Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu")
    predictor = predictor.with_threshold(float(np.median(predictor.predict(test_images).scores)), "test")
    result = predictor.predict(test_images)
    masks = result.defect_masks()
    assert [m.shape for m in masks] == [m.shape for m in result.input_maps]
    assert result.decisions.any() and not result.decisions.all()
    for mask, anomaly_map, score, defective in zip(masks, result.input_maps, result.scores, result.decisions):
        if not defective:  # an image decided good has no outline
            assert not mask.any()
            continue
        assert mask.any()  # an image decided defective always shows where
        expected = anomaly_map >= predictor.thresholds.pixel_level(float(score))
        np.testing.assert_array_equal(mask, expected if expected.any() else anomaly_map >= predictor.threshold)
    low, high = (predictor.with_pixel_threshold(float(np.quantile(result.maps, q)), "test").predict(test_images)
                 for q in (0.2, 0.8))
    for wide, narrow in zip(low.defect_masks(), high.defect_masks()):
        assert not (narrow & ~wide).any()  # a higher threshold outlines a subset
    assert sum(m.sum() for m in low.defect_masks()) > sum(m.sum() for m in high.defect_masks())


def test_predict_writes_defect_masks_and_areas_at_the_pixel_threshold(trained, test_images, tmp_path):
    _, output = trained
    checkpoint = output / runfiles.CHECKPOINT
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    reference = predictor.predict(test_images)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, path in enumerate(test_images):
        shutil.copyfile(path, folder / f"{index:02d}{path.suffix}")
    level = float(np.quantile(reference.maps, 0.9))
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--pixel-threshold", str(level),
                     "--output", str(tmp_path / "out"), "--panels", "none", str(folder)]) == 0
    thresholds = predictor.with_pixel_threshold(level, "test").thresholds
    with np.load(tmp_path / "out" / "maps.npz") as saved:
        assert float(saved["pixel_threshold"]) == pytest.approx(level)
        expected = [thresholds.defect_mask(m, s) for m, s in zip(reference.maps, reference.scores)]
        np.testing.assert_array_equal(saved["defect_masks"], np.stack(expected))
        areas = saved["defect_masks"].mean(axis=(1, 2))
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["defect_area"]) for r in rows], areas, atol=1e-3)


def test_cli_quantile_decides_at_that_quantile_and_excludes_threshold(trained, test_images, tmp_path):
    _, output = trained
    checkpoint = output / runfiles.CHECKPOINT
    scores = Predictor.from_checkpoint(checkpoint, device="cpu").predict(test_images).scores
    folder = test_images[0].parent
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--quantile", "0.01",
                     "--output", str(tmp_path / "q"), "--panels", "none", str(folder)]) == 0
    low = min(Predictor.from_checkpoint(checkpoint, device="cpu").thresholds.holdout_scores)
    with open(tmp_path / "q" / "scores.csv", newline="") as handle:
        decisions = [row["decision"] for row in csv.DictReader(handle)]
    expected = ["defective" if s >= low else "good" for s in scores[: len(decisions)]]
    assert decisions == expected
    with pytest.raises(SystemExit):  # argparse: --threshold and --quantile exclude each other
        cli.main(["predict", "--checkpoint", str(checkpoint), "--threshold", "1", "--quantile", "0.5",
                  "--output", str(tmp_path / "both"), str(folder)])


def test_test_report_gives_the_outcome_of_every_pixel_method(trained):
    _, output = trained
    report = json.loads((output / "metrics.json").read_text())
    at, by_method = report["at_threshold"], report["at_threshold_by_method"]
    with np.load(output / "maps.npz") as saved:
        assert float(saved["pixel_threshold"]) == pytest.approx(at["pixel_threshold"])
        assert float(saved["pixel_relative"]) == pytest.approx(at["pixel_relative"])
    assert set(by_method) == {"quantile", "synthetic-f1", "synthetic-peak"}
    assert by_method[at["pixel_method"]] == at
    for outcome in by_method.values():
        assert outcome["good_flagged"] == at["good_flagged"]  # one image threshold for all methods
        for key in ("pixel_precision", "pixel_recall", "pixel_f1"):
            assert 0.0 <= outcome[key] <= 1.0
    assert report["threshold"]["image"]["statement"]


def test_exported_model_keeps_both_thresholds_and_old_exports_still_load(trained, tmp_path):
    _, output = trained
    checkpoint = output / runfiles.CHECKPOINT
    export_checkpoint(checkpoint, "torchscript", tmp_path / "model")
    exported = Predictor.from_export(tmp_path / "model")
    original = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert exported.pixel_threshold == original.pixel_threshold
    assert exported.thresholds == original.thresholds
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    card = metadata["card"]
    assert card["thresholds"] == original.thresholds.to_dict()
    card.pop("thresholds")  # as exports wrote it before the thresholds were one object (no pixel threshold)
    card.update(threshold=original.threshold, threshold_source="quantile 0.99 of 3 held-out normal images")
    (tmp_path / "model" / "model.json").write_text(json.dumps(metadata))
    older = Predictor.from_export(tmp_path / "model")
    assert older.pixel_threshold == older.threshold == original.threshold  # outlines at the image threshold
