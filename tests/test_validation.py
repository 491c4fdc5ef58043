"""Label-free validation: synthetic defects painted onto held-out normal images, scored while training,
and the best-validation selection; test labels are never read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    HAS_EFFICIENTNET_LITE0,
    requires_mobilenet_weights,
    scrambled_test_labels,
    small_config,
    small_overrides,
)

from cfa_anomaly.checkpoint import read_checkpoint
from cfa_anomaly.config import ConfigError
from cfa_anomaly.data.images import image_to_tensor, read_rgb, tensor_to_rgb
from cfa_anomaly.data.synthetic import PAINTED_DEFECTS, paint_defect
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import training_split
from cfa_anomaly.validation import synthetic_validation_set


@pytest.fixture(scope="module")
def crops(synth_root) -> list[np.ndarray]:
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.4"})
    return [tensor_to_rgb(image_to_tensor(read_rgb(s.image), cfg.data.resize, cfg.data.crop))
            for s in training_split(cfg)[1]]


@pytest.mark.parametrize("defect", PAINTED_DEFECTS)
def test_painted_defect_mask_is_exactly_the_changed_pixels(crops, defect):
    image, donor = crops[0], crops[1]
    painted, mask = paint_defect(image, defect, np.random.default_rng(3), donor)
    np.testing.assert_array_equal(mask, (painted != image).any(-1))
    assert 0.002 <= mask.mean() <= 0.10
    again, same_mask = paint_defect(image, defect, np.random.default_rng(3), donor)
    np.testing.assert_array_equal(again, painted)  # seeded
    np.testing.assert_array_equal(same_mask, mask)


def test_paint_defect_refuses_a_non_square_image(crops):
    with pytest.raises(ValueError, match="square"):
        paint_defect(crops[0][:, :40], "hole", np.random.default_rng(0))


def test_validation_set_has_every_held_out_image_clean_and_painted(synth_root):
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.4"})
    holdout = training_split(cfg)[1]
    validation = synthetic_validation_set(holdout, cfg)
    per_image = 1 + len(PAINTED_DEFECTS)
    assert len(validation.labels) == len(holdout) * per_image
    assert validation.images.shape == (len(holdout) * per_image, 3, cfg.data.crop, cfg.data.crop)
    assert validation.labels.sum() == len(holdout) * len(PAINTED_DEFECTS)
    assert all(m.any() == bool(label) for m, label in zip(validation.masks, validation.labels))


@requires_mobilenet_weights
def test_best_validation_keeps_the_state_of_the_best_epoch(synth_root, tmp_path):
    extra = {"data.holdout_fraction": "0.4", "data.validation": "synthetic", "train.validate_every": "1",
             "train.epochs": "4"}
    best_config = small_config(synth_root, **extra, **{"train.select": "best-validation"})
    train_and_test(best_config, tmp_path / "best", run_test=False)
    summary = json.loads((tmp_path / "best" / "train.json").read_text())["validation"]
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert (tmp_path / "best" / "validation.png").is_file()
    best = max(history, key=lambda h: h["aupro"])  # the first of equal maxima
    assert summary["selected"]["epoch"] == best["epoch"]
    assert "test labels unused" in summary["selected"]["reason"]
    # training is deterministic: the selected state is the state of a run stopped at that epoch
    short_config = small_config(synth_root, **{**extra, "train.epochs": str(best["epoch"])})
    train_and_test(short_config, tmp_path / "short", run_test=False)
    selected = read_checkpoint(tmp_path / "best" / runfiles.CHECKPOINT)[1]["state"]
    stopped = read_checkpoint(tmp_path / "short" / runfiles.CHECKPOINT)[1]["state"]
    for key, tensor in stopped.items():
        assert torch.equal(tensor, selected[key]), key


@pytest.mark.parametrize(("overrides", "key"), [
    ({"train.select": "best-validation"}, "train.select"),
    ({"data.validation": "synthetic", "data.holdout_fraction": "0"}, "data.validation"),
    ({"data.validation": "labels"}, "data.validation"),
    ({"data.validation": "synthetic", "train.validate_every": "0"}, "train.validate_every"),
])
def test_validation_settings_that_cannot_work_are_refused_by_key(synth_root, overrides, key):
    with pytest.raises(ConfigError, match=key):
        small_config(synth_root, **overrides)


@requires_mobilenet_weights
@pytest.mark.skipif(not HAS_EFFICIENTNET_LITE0,
                    reason="efficientnet-lite0 weights not installed (extra [offline-weights])")
def test_benchmark_selects_a_backbone_per_category_by_validation_only(synth_root, tmp_path):
    from cfa_anomaly.benchmark import SELECTED_ROW, run_benchmark, validation_aupro

    overrides = [o for o in small_overrides(synth_root, **{"train.epochs": "1"}) if not o.startswith("data.")]
    overrides += ["data.resize=72", "data.crop=64", "data.holdout_fraction=0.4"]
    summary = run_benchmark(synth_root, tmp_path, ["synth"], overrides, config_dir=None,
                            backbones=["mobilenet_v2", "efficientnet_lite0"], select_by_validation=True)
    chosen = summary["selection"]["synth"]
    scores = {backbone: validation_aupro(tmp_path / backbone / "seed-0" / "synth")
              for backbone in chosen["candidates"]}
    assert all(value is not None for value in scores.values())
    assert chosen["setting"] == max(scores, key=scores.get)  # by validation scores, nothing else
    report = (tmp_path / "results.md").read_text()
    assert f"| {SELECTED_ROW} |" in report and f"synth: {chosen['setting']}" in report
    test_aupro = summary["results"][f"{chosen['setting']}/seed-0/synth"]["aupro"]
    aupro_table = report.split("### AUPRO")[1].split("###")[0]
    assert f"{test_aupro:.3f}" in aupro_table.split(f"| {SELECTED_ROW} |")[1].split("\n")[0]


def test_selection_needs_two_backbones(synth_root, tmp_path):
    from cfa_anomaly.benchmark import run_benchmark

    with pytest.raises(ConfigError, match="--backbones"):
        run_benchmark(synth_root, tmp_path, ["synth"], [], config_dir=None, select_by_validation=True)


@requires_mobilenet_weights
def test_selections_do_not_change_when_the_test_labels_are_scrambled(synth_root, tmp_path):
    """The epoch train.select=best-validation keeps and the setting cfa benchmark --select-by validation
    picks come from the held-out training images alone: with the test labels scrambled (good and defective
    swapped, masks dropped) both are the same, and so is the selected model."""
    scrambled = scrambled_test_labels(synth_root, tmp_path / "scrambled")
    extra = {"data.holdout_fraction": "0.4", "data.validation": "synthetic", "train.validate_every": "1",
             "train.epochs": "3", "train.select": "best-validation"}
    epochs, states = [], []
    for root, name in ((synth_root, "original"), (scrambled, "scrambled")):
        train_and_test(small_config(root, **extra), tmp_path / name)
        validation = json.loads((tmp_path / name / "train.json").read_text())["validation"]
        epochs.append((validation["selected"], validation["history"]))
        states.append(read_checkpoint(tmp_path / name / runfiles.CHECKPOINT)[1]["state"])
    assert epochs[0] == epochs[1]
    assert all(torch.equal(tensor, states[1][key]) for key, tensor in states[0].items())

    from cfa_anomaly.benchmark import run_benchmark

    selections = []
    for root, name in ((synth_root, "original-grid"), (scrambled, "scrambled-grid")):
        overrides = [o for o in small_overrides(root, **{"train.epochs": "1"}) if not o.startswith("data.")]
        overrides += ["data.resize=72", "data.crop=64", "data.holdout_fraction=0.4"]
        summary = run_benchmark(root, tmp_path / name, ["synth"], overrides, config_dir=None,
                                grid=["model.gamma_d=1,2"], select_by_validation=True)
        selections.append(summary["selection"])
    assert len(selections[0]["synth"]["candidates"]) == 2  # both settings were scored
    assert selections[0] == selections[1]
