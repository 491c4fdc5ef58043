"""Train and test on a tiny synthetic dataset; outputs, checkpoints, the `cfa` command and main.py."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cfa_anomaly import cli
from cfa_anomaly.checkpoint import (
    CheckpointError,
    load_state_into,
    read_checkpoint,
    restore_model,
    save_checkpoint,
)
from cfa_anomaly.config import load_config
from cfa_anomaly.data.dataset import AnomalyDataset, make_loader
from cfa_anomaly.data.samples import make_samples, split_holdout
from cfa_anomaly.evaluate import predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.model.factory import build_model
from cfa_anomaly.thresholds import quantile_threshold
from cfa_anomaly.train import fit

from conftest import REPO_ROOT, SYNTH_CATEGORY, SYNTH_COUNTS, requires_mobilenet_weights, small_config, \
    small_overrides

pytestmark = requires_mobilenet_weights

CPU = torch.device("cpu")
METRIC_KEYS = {"image_auroc", "pixel_auroc", "pixel_f1_max", "aupro", "aupimo"}
N_TEST = SYNTH_COUNTS["n_test_good"] + 4 * SYNTH_COUNTS["n_test_per_defect"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def loader_of(samples, cfg):
    return make_loader(AnomalyDataset(samples, cfg.data.resize, cfg.data.crop), cfg.data.batch_size)


def split_loader(cfg, split="test"):
    return loader_of(make_samples(cfg.data.root, cfg.data.category, split), cfg)


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    """One full train_and_test run (mobilenet_v2, 64 px crop, 3 epochs)."""
    cfg = small_config(synth_root)
    output = tmp_path_factory.mktemp("run")
    report = train_and_test(cfg, output)
    return cfg, output, report


@pytest.fixture(scope="module")
def in_memory(synth_root, tmp_path_factory):
    """A model trained in this process, and its checkpoint."""
    cfg = small_config(synth_root)
    model = build_model(cfg, CPU)
    train_loader = make_loader(AnomalyDataset(make_samples(cfg.data.root, cfg.data.category, "train"),
                                              cfg.data.resize, cfg.data.crop), cfg.data.batch_size)
    result = fit(model, train_loader, cfg, CPU)
    path = tmp_path_factory.mktemp("ckpt") / runfiles.CHECKPOINT
    save_checkpoint(model, cfg, path)
    return cfg, model, result, path


# --------------------------------------------------------------------------- outputs of a run
def test_run_writes_all_outputs(run):
    cfg, output, report = run
    for name in ("checkpoint.pt", "config.yaml", "metrics.json", "scores.csv", "maps.npz"):
        assert (output / name).is_file(), name
    assert load_config(output / "config.yaml").to_dict() == cfg.to_dict()

    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["metrics"]) == METRIC_KEYS
    for key, value in metrics["metrics"].items():
        assert value is None or 0.0 <= value <= 1.0, key
    assert metrics["metrics"] == report["metrics"]
    assert metrics["test"]["images"] == N_TEST
    assert metrics["test"]["defective"] == N_TEST - SYNTH_COUNTS["n_test_good"]


def test_scores_maps_and_panels_agree(run):
    cfg, output, report = run
    rows = read_csv(output / "scores.csv")
    assert len(rows) == N_TEST
    for row in rows:
        assert int(row["label"]) == (Path(row["path"]).parent.name != "good")
    with np.load(output / "maps.npz") as npz:
        maps, scores, paths = npz["maps"], npz["scores"], list(npz["paths"])
    assert maps.shape == (N_TEST, cfg.data.crop, cfg.data.crop)
    assert paths == [row["path"] for row in rows]
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-5)
    # image score = max of its map (maps are stored as float16)
    np.testing.assert_allclose(maps.reshape(N_TEST, -1).max(1), scores, rtol=2e-3)
    # decisions follow the held-out threshold
    threshold = report["threshold"]["image"]["value"]
    assert threshold is not None
    for row in rows:
        assert row["decision"] == ("defective" if float(row["score"]) >= threshold else "good")
    # one picture per test image (heatmap panels), named <defect>/<stem>.png
    for path in paths:
        panel = output / "panels" / Path(path).parent.name / f"{Path(path).stem}.png"
        assert panel.is_file(), panel
        picture = np.asarray(Image.open(panel))
        assert picture.ndim == 3 and picture.shape[2] in (3, 4)


def test_training_summary(run):
    cfg, output, report = run
    losses = report["train"]["loss_per_epoch"]
    assert len(losses) == cfg.train.epochs
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    # every train/good image is used either for training or for the held-out threshold, never both
    assert report["train"]["images"] + report["threshold"]["image"]["images"] == SYNTH_COUNTS["n_train"]
    assert report["threshold"]["image"]["images"] >= 1
    _, payload = read_checkpoint(output / runfiles.CHECKPOINT)
    radius = float(payload["state"]["loss_fn.radius"])
    assert radius == pytest.approx(report["train"]["radius"])
    assert radius != cfg.model.radius_init


def test_threshold_is_quantile_of_held_out_normal_scores(run):
    cfg, output, report = run
    train = make_samples(cfg.data.root, cfg.data.category, "train")
    kept, held = split_holdout(train, cfg.data.holdout_fraction, cfg.train.seed)
    assert len(held) == report["threshold"]["image"]["images"]
    assert {s.image for s in kept}.isdisjoint(s.image for s in held)
    assert {s.image for s in kept} | {s.image for s in held} == {s.image for s in train}
    predictor = Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu")
    scores = predict(predictor, loader_of(held, cfg)).scores
    expected = quantile_threshold(scores, cfg.evaluation.threshold_quantile)
    assert report["threshold"]["image"]["value"] == pytest.approx(expected, rel=1e-5)


def test_localises_better_than_chance(run):
    _, _, report = run
    assert report["metrics"]["pixel_auroc"] > 0.5


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_loads_without_code_execution(in_memory):
    cfg, model, _, path = in_memory
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["config"] == cfg.to_dict()
    assert not any(k.startswith("extractor.") for k in payload["state"])
    torch.testing.assert_close(payload["state"]["memory_bank"], model.memory_bank)


def test_checkpoint_round_trip_gives_the_same_maps(in_memory):
    cfg, model, result, path = in_memory
    assert all(math.isfinite(v) for v in result.losses)
    assert result.radius != cfg.model.radius_init
    loaded, loaded_cfg, _ = restore_model(path, "cpu")
    assert loaded_cfg.to_dict() == cfg.to_dict() and loaded.memory_bank.device == CPU
    images = next(iter(split_loader(cfg)))["image"]
    with torch.no_grad():
        maps_a, scores_a = model(images)
        maps_b, scores_b = loaded(images)
    assert torch.allclose(maps_a, maps_b)
    assert torch.allclose(scores_a, scores_b)


def test_saved_run_checkpoint_reproduces_saved_scores(run):
    cfg, output, _ = run
    predictions = predict(Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu"), split_loader(cfg))
    with np.load(output / "maps.npz") as npz:
        np.testing.assert_allclose(predictions.scores, npz["scores"], rtol=1e-5)
        np.testing.assert_allclose(predictions.maps, npz["maps"].astype(np.float32), rtol=2e-3, atol=1e-3)


def test_checkpoint_from_another_backbone_is_rejected(in_memory, tmp_path):
    cfg, _, _, path = in_memory
    _, payload = read_checkpoint(path)
    other_cfg = load_config(None, small_overrides(cfg.data.root, **{"model.backbone": "resnet18",
                                                                   "model.pretrained": "false"}))
    other = build_model(other_cfg, CPU)
    with pytest.raises(CheckpointError, match=str(path)):
        load_state_into(other, payload, path)
    # the same through restore_model: a checkpoint whose config names another backbone
    payload["config"] = other_cfg.to_dict()
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(CheckpointError, match="edited.pt"):
        restore_model(edited, "cpu")


def test_bad_checkpoint_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pt"):
        restore_model(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        read_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt"):
        read_checkpoint(foreign)


def test_same_seed_gives_identical_results(run, synth_root, tmp_path):
    cfg, output, _ = run
    again = train_and_test(small_config(synth_root), tmp_path)
    assert (tmp_path / "scores.csv").read_text() == (output / "scores.csv").read_text()
    with np.load(output / "maps.npz") as a, np.load(tmp_path / "maps.npz") as b:
        np.testing.assert_array_equal(a["maps"], b["maps"])
    assert again["train"]["loss_per_epoch"] == run[2]["train"]["loss_per_epoch"]


def test_random_backbone_checkpoint_round_trip(synth_root, tmp_path):
    cfg = small_config(synth_root, **{"model.backbone": "resnet18", "model.pretrained": "false",
                                      "train.epochs": "1"})
    torch.manual_seed(1234)  # whatever state the global generator is in must not matter
    model = build_model(cfg, CPU)
    loader = make_loader(AnomalyDataset(make_samples(cfg.data.root, cfg.data.category, "train"),
                                        cfg.data.resize, cfg.data.crop), cfg.data.batch_size)
    fit(model, loader, cfg, CPU)
    save_checkpoint(model, cfg, tmp_path / runfiles.CHECKPOINT)
    loaded, _, _ = restore_model(tmp_path / runfiles.CHECKPOINT, "cpu")
    images = next(iter(split_loader(cfg)))["image"]
    with torch.no_grad():
        assert torch.allclose(model(images)[0], loaded(images)[0])


# --------------------------------------------------------------------------- the cfa command
def test_cli_train_bad_key_returns_2_and_names_it(capsys, tmp_path):
    code = cli.main(["train", "--set", "model.bogus_key=3", "--output", str(tmp_path / "out")])
    assert code == 2
    assert "model.bogus_key" in capsys.readouterr().err


def test_cli_train_bad_value_in_yaml_returns_2(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": "abc"}}))
    assert cli.main(["train", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_cli_train_no_test_writes_checkpoint(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    sets = [arg for item in small_overrides(synth_root, **{"train.epochs": "1"}) for arg in ("--set", item)]
    assert cli.main(["train", "--no-test", "--output", str(out), *sets]) == 0
    assert (out / runfiles.CHECKPOINT).is_file() and (out / "train.json").is_file()
    assert not (out / "metrics.json").exists()
    assert json.loads((out / "train.json").read_text())["train"]["epochs"] == 1


def test_cli_predict_writes_scores_matching_the_test_run(run, tmp_path, capsys):
    _, output, _ = run
    rows = read_csv(output / "scores.csv")
    chosen = [rows[0], rows[-1]]
    out = tmp_path / "pred"
    code = cli.main(["predict", "--checkpoint", str(output / runfiles.CHECKPOINT),
                     *(r["path"] for r in chosen), "--output", str(out), "--device", "cpu"])  # as trained
    assert code == 0
    predicted = read_csv(out / "scores.csv")
    assert [r["path"] for r in predicted] == [r["path"] for r in chosen]
    assert list(predicted[0]) == list(rows[0])  # one schema for cfa test and cfa predict
    assert predicted[0]["label"] == "" and rows[0]["label"] in ("0", "1")
    np.testing.assert_allclose([float(r["defect_area"]) for r in predicted],
                               [float(r["defect_area"]) for r in chosen], atol=1e-3)
    threshold = json.loads((output / "metrics.json").read_text())["threshold"]["image"]["value"]
    assert [r["decision"] for r in predicted] == [r["decision"] for r in chosen]
    assert all(r["decision"] == ("defective" if float(r["score"]) >= threshold else "good") for r in predicted)
    for got, expected in zip(predicted, chosen):
        assert float(got["score"]) == pytest.approx(float(expected["score"]), rel=1e-4)
    assert (out / "maps.npz").is_file() and len(list((out / "panels").rglob("*.png"))) == 2


def test_cli_test_reproduces_the_run_metrics(run, tmp_path, capsys):
    _, output, report = run
    out = tmp_path / "test"
    assert cli.main(["test", "--checkpoint", str(output / runfiles.CHECKPOINT), "--output", str(out),
                     "--device", "cpu"]) == 0  # the device it was trained on: the same arithmetic
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics.keys() == report["metrics"].keys()
    for key, value in report["metrics"].items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_cli_refuses_non_empty_output_without_overwrite(run, tmp_path, capsys, synth_root):
    _, output, _ = run
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = snapshot(out)
    code = cli.main(["predict", "--checkpoint", str(output / runfiles.CHECKPOINT),
                     read_csv(output / "scores.csv")[0]["path"], "--output", str(out)])
    assert code == 2
    assert str(out) in capsys.readouterr().err
    sets = [arg for item in small_overrides(synth_root) for arg in ("--set", item)]
    assert cli.main(["train", "--output", str(out), *sets]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(out) == before


def test_cli_missing_checkpoint_returns_2(tmp_path, capsys):
    code = cli.main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path), "--output",
                     str(tmp_path / "o")])
    assert code == 2
    assert "none.pt" in capsys.readouterr().err


# --------------------------------------------------------------------------- main.py (original command line)
def run_main(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), "--task_type", "anomaly", "--model_type", "unsupervised",
         "--model_name", "cfa", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )


def test_main_py_trains_and_tests_from_a_yaml(synth_root, tmp_path):
    cfg = small_config(synth_root, **{"train.epochs": "1"})
    path = tmp_path / "cfa.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    result = run_main("--yaml_config", str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == METRIC_KEYS
    assert metrics["category"] == SYNTH_CATEGORY and metrics["train"]["epochs"] == 1


def test_main_py_missing_data_root_names_the_path(tmp_path):
    missing = tmp_path / "no_data_here"
    path = tmp_path / "cfa.yaml"
    path.write_text(yaml.safe_dump({"data": {"category": "bottle"}, "model": {"backbone": "mobilenet_v2"}}))
    result = run_main("--yaml_config", str(path), "--data_root", str(missing), "--output", str(tmp_path / "out"))
    assert result.returncode != 0
    assert str(missing / "bottle") in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_other_backbone_weights_is_rejected(tmp_path):
    cfg = load_config(None, ["model.backbone=resnet18", "model.pretrained=false", "data.resize=72",
                             "data.crop=64"])
    trained = build_model(cfg, CPU)  # seeded by train.seed
    save_checkpoint(trained, cfg, tmp_path / "a.pt")
    _, payload = read_checkpoint(tmp_path / "a.pt")
    assert payload["backbone_weights_sha256"] == trained.extractor.weights_hash()

    same = build_model(cfg, CPU)
    load_state_into(same, payload, tmp_path / "a.pt")  # same seed, same random weights: accepted
    cfg.train.seed = 1
    other = build_model(cfg, CPU)
    assert other.extractor.weights_hash() != trained.extractor.weights_hash()
    with pytest.raises(CheckpointError, match="other resnet18 weights"):
        load_state_into(other, payload, tmp_path / "a.pt")


@pytest.mark.parametrize("validation", [{}, {"data.validation": "synthetic", "train.validate_every": "1",
                                              "train.select": "best-validation"}], ids=["plain", "validated"])
def test_killed_run_resumes_from_its_last_epoch_to_the_same_model(synth_root, tmp_path, monkeypatch, capsys,
                                                                   validation):
    import cfa_anomaly.train as training

    cfg = small_config(synth_root, **{"train.epochs": "4", "data.holdout_fraction": "0.2", **validation})
    train_and_test(cfg, tmp_path / "full", run_test=False)

    save_state = training.save_training_state

    def save_then_die(path, model, optimizer, generator, epoch, losses, config, observer=None):
        save_state(path, model, optimizer, generator, epoch, losses, config, observer)
        if epoch == 2:
            raise KeyboardInterrupt  # killed right after epoch 2 was saved

    monkeypatch.setattr(training, "save_training_state", save_then_die)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_and_test(cfg, killed, run_test=False)
    monkeypatch.undo()
    assert not (killed / runfiles.CHECKPOINT).exists()
    assert training.read_training_state(killed / "train_state.pt")["epoch"] == 2

    assert cli.main(["train", "--resume", str(killed), "--no-test"]) == 0
    assert "after epoch 2 of 4" in capsys.readouterr().err  # progress: on stderr
    assert not (killed / "train_state.pt").exists()  # superseded by the checkpoint
    _, full = read_checkpoint(tmp_path / "full" / runfiles.CHECKPOINT)
    _, resumed = read_checkpoint(killed / runfiles.CHECKPOINT)
    assert full["extra"]["train"]["loss_per_epoch"] == resumed["extra"]["train"]["loss_per_epoch"]
    assert full["extra"]["threshold"] == resumed["extra"]["threshold"]
    assert full["extra"].get("validation") == resumed["extra"].get("validation")  # history and selection
    for key, tensor in full["state"].items():
        assert torch.equal(tensor, resumed["state"][key]), key


def test_resume_without_a_saved_state_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path)]) == 2
    assert "train_state.pt" in capsys.readouterr().err
