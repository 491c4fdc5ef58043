"""train.log: a run tracked in TensorBoard or MLflow holds the run's own figures, read back from the store."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import has_module, requires_mobilenet_weights, small_config

from cfa_anomaly import runfiles
from cfa_anomaly.config import ConfigError
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.tracking import TrackingError, open_tracker

EXTRA = {"data.holdout_fraction": "0.4", "data.validation": "synthetic", "train.validate_every": "1"}


def saved(output):
    metrics = json.loads((output / runfiles.METRICS).read_text())
    losses = json.loads((output / runfiles.TRAIN_SUMMARY).read_text())["train"]["loss_per_epoch"]
    return {k: v for k, v in metrics["metrics"].items() if v is not None}, losses


@requires_mobilenet_weights
@pytest.mark.skipif(not has_module("tensorboard"), reason="tensorboard not installed (extra [tensorboard])")
def test_a_tensorboard_run_holds_the_losses_validation_and_final_metrics(synth_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    train_and_test(small_config(synth_root, **EXTRA, **{"train.log": "tensorboard"}), output)
    metrics, losses = saved(output)
    events = EventAccumulator(str(output / "tensorboard"), size_guidance={"images": 0}).Reload()
    logged = [event.value for event in events.Scalars("train/loss")]
    assert logged == pytest.approx(losses, abs=1e-5) and len(logged) == 3
    assert len(events.Scalars("validation/aupro")) == 3
    for key, value in metrics.items():
        assert events.Scalars(f"test/{key}")[0].value == pytest.approx(value, abs=1e-6), key
    assert {"plots/roc", "plots/score_histogram", "plots/validation"} <= set(events.Tags()["images"])


@requires_mobilenet_weights
@pytest.mark.skipif(not has_module("mlflow"), reason="mlflow not installed (extra [mlflow])")
def test_an_mlflow_run_holds_the_run_s_figures_params_and_files(synth_root, tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = tmp_path / "run"
    cfg = small_config(synth_root, **EXTRA, **{"train.log": "mlflow", "train.log_uri": store})
    train_and_test(cfg, output)
    metrics, losses = saved(output)
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("synth").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["data.category"] == "synth" and run.data.params["train.epochs"] == "3"
    for key, value in metrics.items():
        assert run.data.metrics[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(losses, abs=1e-6)
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {runfiles.METRICS, runfiles.CHECKPOINT, runfiles.ROC} <= artefacts
    assert (tmp_path / "mlartifacts").is_dir()  # a local store's files beside its database


def test_a_tracker_that_is_not_installed_is_a_clear_error_and_a_bad_name_is_refused(synth_root, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(TrackingError, match=r"pip install 'cfa-anomaly\[mlflow\]'"):
        open_tracker(small_config(synth_root, **{"train.log": "mlflow"}), tmp_path)
    with pytest.raises(ConfigError, match="train.log"):
        small_config(synth_root, **{"train.log": "wandb"})


@requires_mobilenet_weights
@pytest.mark.skipif(not has_module("tensorboard"), reason="tensorboard not installed (extra [tensorboard])")
def test_cfa_train_log_and_log_uri_set_the_tracker(synth_root, tmp_path):
    from conftest import small_overrides

    from cfa_anomaly import cli

    sets = [item for o in small_overrides(synth_root, **{"train.epochs": "1"}) for item in ("--set", o)]
    events = tmp_path / "events"
    assert cli.main(["train", *sets, "--log", "tensorboard", "--log-uri", str(events), "--no-report",
                     "--output", str(tmp_path / "run")]) == 0
    assert list(events.glob("events.out.tfevents.*"))
    config = json.loads((tmp_path / "run" / runfiles.METRICS).read_text())["config"]
    assert config["train"]["log"] == "tensorboard"
