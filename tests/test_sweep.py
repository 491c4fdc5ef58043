"""`cfa benchmark --grid KEY=a,b`: the settings it sweeps, their names, and a grid over a config key end to
end."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_overrides

from cfa_anomaly import cli
from cfa_anomaly.config import ConfigError, config_from_dict
from cfa_anomaly.sweep import parse_axes, settings_grid


def test_the_grid_is_the_product_of_the_keys_in_the_order_given():
    settings = settings_grid(parse_axes(["data.crop=224,320", "train.epochs=10,30"]))
    assert [s.as_overrides() for s in settings] == [
        ["data.crop=224", "train.epochs=10"], ["data.crop=224", "train.epochs=30"],
        ["data.crop=320", "train.epochs=10"], ["data.crop=320", "train.epochs=30"]]
    assert settings[1].label == "data.crop=224, train.epochs=30"
    assert settings[1].folder == "data.crop=224+train.epochs=30"
    assert len({s.folder for s in settings}) == len({s.label for s in settings}) == 4


def test_tied_keys_change_together():
    settings = settings_grid(parse_axes(["data.resize+data.crop=256+224,366+320", "train.epochs=10"]))
    assert [s.as_overrides() for s in settings] == [
        ["data.resize=256", "data.crop=224", "train.epochs=10"],
        ["data.resize=366", "data.crop=320", "train.epochs=10"]]
    assert settings[1].label == "data.resize=366, data.crop=320, train.epochs=10"


def test_a_backbone_only_grid_keeps_the_backbone_names():
    settings = settings_grid(parse_axes(["model.backbone=mobilenet_v2,resnet18"]))
    assert [(s.label, s.folder) for s in settings] == [("mobilenet_v2", "mobilenet_v2"),
                                                       ("resnet18", "resnet18")]


def test_values_that_are_not_folder_names_get_distinct_safe_folders():
    settings = settings_grid(parse_axes(["data.holdout_dir=/data/a b,/data/a_b"]))
    folders = [s.folder for s in settings]
    assert len(set(folders)) == 2 and not any("/" in f or " " in f for f in folders)
    many = settings_grid(parse_axes([f"model.{key}=1,2" for key in ("K", "J", "gamma_c", "gamma_d")]
                                    + ["data.holdout_dir=" + "/very/long/folder" * 12]))
    assert all(len(s.folder) <= 120 for s in many) and len({s.folder for s in many}) == len(many) == 16
    assert settings_grid([]) == [settings_grid([])[0]] and settings_grid([])[0].as_overrides() == []


@pytest.mark.parametrize(("items", "message"), [
    (["data.crop"], "section.key=value1,value2"),
    (["data.crop=224,,320"], "without empty values"),
    (["data.crop=224,224"], "repeated"),
    (["data.crop=224", "data.crop=320"], "swept twice"),
    (["data.resize+data.crop=256+224", "data.crop=320"], "swept twice"),
    (["data.resize+data.crop=256+224,320"], "one part per key"),
    (["data.resize+data.crop=256+224,256+224"], "repeated"),
    (["data.crops=224,320"], "unknown key data.crops"),
    (["data.crop=224,big"], "data.crop = 'big' has the wrong type"),
    (["train.seed=0,1"], "--seeds"),
    (["data.category=grid,bottle"], "--categories"),
    (["model.backbone=mobilenet_v2,resnet19"], "'resnet19' is unknown"),
])
def test_a_grid_that_cannot_be_swept_is_refused_naming_the_item(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_axes(items)


def test_the_command_refuses_a_bad_grid_before_any_work(synth_root, tmp_path, capsys):
    code = cli.main(["benchmark", "--root", str(synth_root), "--categories", SYNTH_CATEGORY, "--output",
                     str(tmp_path / "out"), "--grid", "data.crop=64,sixty"])
    assert code == 2
    assert "data.crop = 'sixty'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_setting_that_makes_a_config_unusable_is_refused_before_any_training(synth_root, tmp_path, capsys):
    code = cli.main(["benchmark", "--root", str(synth_root), "--categories", SYNTH_CATEGORY, "--output",
                     str(tmp_path / "out"), "--set", "data.resize=72", "--grid", "data.crop=64,96"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"[data.crop=96/seed-default/{SYNTH_CATEGORY}] config error: data.crop = 96" in err
    assert "data.resize (72)" in err and "tied" in err and err.count("data.crop = 96") == 1
    assert f"data.crop=64/seed-default/{SYNTH_CATEGORY}" not in err
    assert not (tmp_path / "out" / "data.crop=64").exists()  # the usable setting was not trained either


@requires_mobilenet_weights
def test_a_grid_over_a_config_key_trains_each_setting_selects_by_validation_and_resumes(synth_root, tmp_path):
    from cfa_anomaly.benchmark import SELECTED_ROW, run_benchmark, validation_aupro

    overrides = [o for o in small_overrides(synth_root, **{"train.epochs": "1"}) if not o.startswith("data.")]
    overrides += ["data.resize=72", "data.holdout_fraction=0.4"]
    summary = run_benchmark(synth_root, tmp_path, [SYNTH_CATEGORY], overrides, config_dir=None,
                            grid=["data.crop=56,64"], select_by_validation=True)
    keys = [f"data.crop={crop}/seed-0/{SYNTH_CATEGORY}" for crop in (56, 64)]
    assert summary["status"] == dict.fromkeys(keys, "done")
    for key, crop in zip(keys, (56, 64)):  # each cell trained with its own value, the rest as set
        saved = json.loads((tmp_path / key / "metrics.json").read_text())["config"]
        assert config_from_dict(saved).data.crop == crop and saved["data"]["resize"] == 72
        assert summary["cells"][key]["setting"] == {"data.crop": str(crop)}
    scores = {f"data.crop={crop}": validation_aupro(tmp_path / key) for key, crop in zip(keys, (56, 64))}
    chosen = summary["selection"][SYNTH_CATEGORY]
    assert chosen["setting"] == max(scores, key=scores.get)  # validation scores only
    report = (tmp_path / "results.md").read_text()
    assert "| data.crop=56 |" in report and "| data.crop=64 |" in report and f"| {SELECTED_ROW} |" in report
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {row["setting"] for row in rows} == {"data.crop=56", "data.crop=64", SELECTED_ROW}
    again = run_benchmark(synth_root, tmp_path, [SYNTH_CATEGORY], overrides, config_dir=None,
                          grid=["data.crop=56,64"], select_by_validation=True)
    assert again["status"] == dict.fromkeys(keys, "reused") and again["selection"] == summary["selection"]
