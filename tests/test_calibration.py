"""Thresholds: the conformal image quantile and what a hold-out supports, one story for decision and
outline, their records old and new, per-defect-type figures, and the proof that no test label is used."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cfa_anomaly.calibration import thresholds_from_holdout
from cfa_anomaly.checkpoint import read_checkpoint
from cfa_anomaly.crossfit import folds_of, wanted
from cfa_anomaly.data.dataset import image_loader, training_loader
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.evaluate import predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.model.factory import build_model
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import training_split
from cfa_anomaly.thresholds import Thresholds, ThresholdError, conformal_rank, quantile_threshold
from cfa_anomaly.train import fit

from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, scrambled_test_labels, small_config


def test_conformal_quantile_is_an_order_statistic_and_saturates_at_the_maximum():
    scores = np.arange(1.0, 21.0)  # 20 held-out scores 1..20
    assert conformal_rank(20, 0.5) == 11 and quantile_threshold(scores, 0.5) == 11.0
    assert conformal_rank(20, 0.9) == 19 and quantile_threshold(scores, 0.9) == 19.0
    assert quantile_threshold(scores, 0.99) == 20.0  # 20 images cannot support 0.99: their maximum
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ThresholdError, match="quantile"):
            quantile_threshold(scores, bad)


def test_false_alarm_rate_matches_simulated_normal_parts():
    rng = np.random.default_rng(0)
    trials, held, quantile = 4000, 20, 0.9
    exceed = 0
    for _ in range(trials):
        normal = rng.normal(size=held + 1)  # 20 held out, 1 new normal part
        exceed += normal[-1] >= quantile_threshold(normal[:-1], quantile)
    thresholds = Thresholds(image=0.0, quantile=quantile, holdout_scores=tuple(np.sort(rng.normal(size=held))))
    expected = Thresholds(image=quantile_threshold(np.asarray(thresholds.holdout_scores), quantile),
                          quantile=quantile, holdout_scores=thresholds.holdout_scores)
    assert expected.false_alarm_rate() == pytest.approx(2 / 21)  # rank 19 of 20: 2 of 21 above
    assert expected.supported() is True
    assert exceed / trials == pytest.approx(2 / 21, abs=0.015)  # the bound is exact for order statistics


def test_the_realised_false_alarm_rate_exceeds_its_bound_one_time_in_ten():
    rng = np.random.default_rng(1)
    held, trials = 24, 4000
    bound = Thresholds(image=0.0, quantile=0.99, holdout_scores=tuple(np.linspace(-1, 0, held))).false_alarm_rate_bound()
    assert bound == pytest.approx(1 - 0.1 ** (1 / held))
    realised = norm.sf(rng.normal(size=(trials, held)).max(axis=1))  # each hold-out's true rate at its maximum
    assert (realised > bound).mean() == pytest.approx(0.1, abs=0.015)


def test_what_a_small_hold_out_supports_is_stated():
    few = Thresholds(image=3.0, quantile=0.99, holdout_scores=(1.0, 2.0, 3.0, 2.5, 0.5))
    assert few.supported() is False
    assert few.false_alarm_rate() == pytest.approx(1 / 6)
    assert "cannot support the 0.99 quantile" in few.statement() and "16.7%" in few.statement()
    given = few.with_image(2.2, "--threshold")  # two held-out scores above it
    assert given.quantile is None and given.supported() is None
    assert given.false_alarm_rate() == pytest.approx(3 / 6)


def test_decision_and_outline_tell_one_story():
    thresholds = Thresholds(image=1.0, pixel=0.5, pixel_relative=0.5)
    anomaly_map = np.zeros((8, 8))
    anomaly_map[2:4, 2:4] = 0.9  # peak below the image threshold: good, no outline
    assert thresholds.label(0.9) == "good" and not thresholds.defect_mask(anomaly_map).any()
    anomaly_map[2, 2] = 2.0  # decided defective: outlined at 0.5 + 0.5 * (2.0 - 0.5) = 1.25
    assert thresholds.pixel_level(2.0) == pytest.approx(1.25)
    np.testing.assert_array_equal(thresholds.defect_mask(anomaly_map), anomaly_map >= 1.25)
    high = Thresholds(image=1.0, pixel=3.0)  # nothing reaches the pixel level: the decision's own pixels
    np.testing.assert_array_equal(high.defect_mask(anomaly_map), anomaly_map >= 1.0)
    assert Thresholds().defect_mask(anomaly_map) is None and Thresholds().label(2.0) is None


def test_records_round_trip_and_old_records_still_read():
    thresholds = Thresholds(image=1.5, image_source="q", quantile=0.99, pixel=0.7, pixel_relative=0.4,
                            pixel_source="p", pixel_method="synthetic-peak",
                            pixel_candidates={"quantile": (0.7, 0.0), "synthetic-peak": (0.7, 0.4)},
                            holdout_scores=(1.0, 1.5))
    assert Thresholds.from_dict(json.loads(json.dumps(thresholds.to_dict()))) == thresholds
    old_checkpoint = {"value": 1.5, "source": "q", "quantile": 0.99, "images": 2, "holdout_scores": [1.0, 1.5],
                      "pixel": {"value": 0.7, "quantile": 0.999, "source": "p"}}
    read = Thresholds.from_dict(old_checkpoint)
    assert (read.image, read.pixel, read.pixel_relative, read.holdout_scores) == (1.5, 0.7, 0.0, (1.0, 1.5))
    assert Thresholds.from_dict({"value": None, "source": "none"}).outline_level is None
    with pytest.raises(ThresholdError, match="synthetic-f1"):
        thresholds.with_method("synthetic-f1")
    assert thresholds.with_method("quantile").pixel_relative == 0.0


@requires_mobilenet_weights
def test_thresholds_do_not_depend_on_test_labels(synth_root, tmp_path):
    """The same training data with the test labels scrambled (good and defective images swapped between
    folders, masks dropped) gives the very same thresholds."""
    scrambled = scrambled_test_labels(synth_root, tmp_path / "scrambled")
    records = []
    for root, name in ((synth_root, "original"), (scrambled, "scrambled")):
        cfg = small_config(root, **{"data.holdout_fraction": "0.5"})
        report = train_and_test(cfg, tmp_path / name)
        records.append(read_checkpoint(tmp_path / name / runfiles.CHECKPOINT)[1]["extra"]["threshold"])
        assert report["threshold"] == records[-1]
    assert records[0] == records[1]
    assert records[0]["image"]["value"] is not None and records[0]["pixel"]["method"] == "synthetic-peak"


@requires_mobilenet_weights
def test_per_defect_type_figures(synth_root, tmp_path):
    report = train_and_test(small_config(synth_root, **{"data.holdout_fraction": "0.5"}), tmp_path)
    per_kind = report["per_kind"]
    kinds = sorted(p.name for p in (synth_root / SYNTH_CATEGORY / "test").iterdir() if p.name != "good")
    assert sorted(per_kind) == kinds
    good = len(list((synth_root / SYNTH_CATEGORY / "test" / "good").iterdir()))
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = [{**row, "kind": Path(row["path"]).parent.name} for row in csv.DictReader(handle)]
    for kind, row in per_kind.items():
        assert row["images"] == len(list((synth_root / SYNTH_CATEGORY / "test" / kind).iterdir()))
        assert row["good_images"] == good
        assert 0.0 <= row["pixel_auroc"] <= 1.0
        chosen = [r for r in rows if r["kind"] in ("good", kind)]
        expected = roc_auc_score([r["kind"] == kind for r in chosen], [float(r["score"]) for r in chosen])
        assert row["image_auroc"] == pytest.approx(expected)
    assert json.loads((tmp_path / "metrics.json").read_text())["per_kind"] == per_kind


def test_cross_fitting_is_wanted_for_small_hold_outs_only(caplog):
    cfg = small_config("unused", **{"evaluation.cross_fit_below": "20"})
    few, many = list(range(19)), list(range(20))
    assert wanted(few, list(range(30)), cfg) and not wanted(many, list(range(30)), cfg)
    assert not wanted([], list(range(30)), cfg)  # no hold-out: no thresholds at all
    assert not wanted(few, list(range(5)), cfg) and "too few" in caplog.text  # 5 images, 5 folds
    assert not wanted(few, list(range(30)), small_config("unused"))  # cross_fit_below = 0: never


def test_folds_partition_the_training_images():
    samples = list(range(10))
    folds = folds_of(samples, 3, seed=0)
    assert sorted(x for fold in folds for x in fold) == samples and sorted(map(len, folds)) == [3, 3, 4]
    assert folds == folds_of(samples, 3, seed=0) and folds != folds_of(samples, 3, seed=1)
    with pytest.raises(DatasetError, match="cross_fit_folds"):
        folds_of(samples[:3], 3, seed=0)


@requires_mobilenet_weights
def test_cross_fitted_scores_join_the_held_out_ones(synth_root, tmp_path):
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.34", "evaluation.cross_fit_folds": "2",
                                      "evaluation.cross_fit_below": "20"})
    report = train_and_test(cfg, tmp_path, run_test=False)
    image = report["threshold"]["image"]
    train, holdout = training_split(cfg)
    assert (image["images"], image["cross_fitted"]) == (len(holdout), len(train)) == (2, 4)
    scores = report["threshold"]["holdout_scores"]
    assert len(scores) == 6 and image["value"] == pytest.approx(max(scores))
    assert image["expected_false_alarm_rate"] == pytest.approx(1 / 7)
    assert "4 out-of-fold scores" in image["statement"]
    # the first fold's images, scored by a model trained the same way without them
    fold = folds_of(train, 2, cfg.train.seed)[0]
    model = build_model(cfg, torch.device("cpu"))
    fit(model, training_loader([s for s in train if s not in fold], cfg), cfg, torch.device("cpu"))
    expected = predict(Predictor.from_model(model, cfg, None), image_loader(fold, cfg)).scores
    np.testing.assert_allclose(scores[2: 2 + len(fold)], expected, rtol=1e-5)


@requires_mobilenet_weights
def test_the_validations_painted_set_gives_the_same_thresholds_as_a_fresh_one(synth_root, tmp_path):
    """With data.validation=synthetic, calibration reuses the painted set training built: the same
    thresholds as painting the held-out images afresh."""
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.5", "data.validation": "synthetic"})
    report = train_and_test(cfg, tmp_path, run_test=False)
    predictor = Predictor.from_checkpoint(tmp_path / runfiles.CHECKPOINT, device="cpu")
    fresh = thresholds_from_holdout(predictor, training_split(cfg)[1], cfg)
    assert fresh.to_dict() == report["threshold"]
