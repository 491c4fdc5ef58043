"""Configuration: defaults, YAML files, command-line overrides and validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cfa_anomaly import config
from cfa_anomaly.config import (
    Config,
    ConfigError,
    apply_dict,
    config_from_dict,
    load_config,
    parse_overrides,
    save_config,
)

from conftest import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs" / "anomaly" / "unsupervised" / "cfa"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []


def write_yaml(path: Path, content: dict | str) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


# --------------------------------------------------------------------------- defaults and YAML
def test_defaults_validate_and_follow_the_paper():
    cfg = Config().validate()
    assert (cfg.data.resize, cfg.data.crop) == (224, 224)  # a user's data: the whole image is scored
    assert (cfg.model.K, cfg.model.J) == (3, 3)
    assert cfg.model.nu == pytest.approx(1e-3) and cfg.model.alpha == pytest.approx(0.1)
    assert cfg.model.radius_init == pytest.approx(1e-5)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay) == (30, pytest.approx(1e-3), pytest.approx(5e-4))
    assert load_config().to_dict() == Config().to_dict()
    paper = load_config(Path(__file__).resolve().parents[1] / "configs/anomaly/unsupervised/cfa/bottle.yaml")
    assert (paper.data.resize, paper.data.crop) == (256, 224)  # the paper's MVTec AD convention


def test_yaml_file_is_applied_on_top_of_defaults(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "data": {"category": "carpet", "resize": 128, "crop": 112},
        "model": {"backbone": "resnet18", "K": 4, "J": 2, "alpha": 0.5},
        "train": {"epochs": 7},
        "output_dir": "somewhere",
    })
    cfg = load_config(path)
    assert cfg.data.category == "carpet" and (cfg.data.resize, cfg.data.crop) == (128, 112)
    assert cfg.model.backbone == "resnet18" and (cfg.model.K, cfg.model.J) == (4, 2)
    assert cfg.model.alpha == 0.5 and cfg.train.epochs == 7 and cfg.output_dir == "somewhere"
    # untouched keys keep their defaults
    assert cfg.train.lr == Config().train.lr and cfg.data.batch_size == Config().data.batch_size


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path / "e.yaml", "")).to_dict() == Config().to_dict()


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["model.backbone=mobilenet_v2", "data.crop=96", "data.resize=100", "train.lr=0.01",
                             "model.weights=/some/file.pth"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_missing_file_and_broken_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = write_yaml(tmp_path / "bad.yaml", "data: [unclosed\n  model: {")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


# --------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize("content, key", [
    ({"dataa": {"root": "x"}}, "dataa"),
    ({"model": {"backbone": "resnet18", "gama_c": 2}}, "gama_c"),
    ({"train": {"epoch": 3}}, "epoch"),
    ({"evaluation": {"treshold_quantile": 0.9}}, "treshold_quantile"),
])
def test_unknown_section_or_key_is_rejected_by_name(tmp_path, content, key):
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path / "c.yaml", content))
    assert key in str(err.value)


def test_section_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="model"):
        load_config(write_yaml(tmp_path / "c.yaml", {"model": "resnet18"}))


# --------------------------------------------------------------------------- wrong types
@pytest.mark.parametrize("content, key", [
    ({"train": {"epochs": "abc"}}, "train.epochs"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"model": {"pretrained": "maybe"}}, "model.pretrained"),
    ({"model": {"nu": "small"}}, "model.nu"),
    ({"data": {"crop": [224]}}, "data.crop"),
    ({"data": {"category": {"a": 1}}}, "data.category"),
    ({"data": {"resize": None}}, "data.resize"),
])
def test_wrong_types_are_rejected_naming_the_key(tmp_path, content, key):
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path / "c.yaml", content))
    assert key in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("model.pretrained=maybe", "model.pretrained"),
    ("train.lr=fast", "train.lr"),
])
def test_wrong_types_on_the_command_line_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


# --------------------------------------------------------------------------- impossible values
@pytest.mark.parametrize("overrides, key", [
    (["data.resize=200", "data.crop=224"], "data.crop"),
    (["train.epochs=-1"], "train.epochs"),
    (["data.resize=0"], "data.resize"),
    (["data.batch_size=0"], "data.batch_size"),
    (["model.K=0"], "model.K"),
    (["model.J=-1"], "model.J"),
    (["model.nu=0"], "model.nu"),
    (["train.lr=-0.1"], "train.lr"),
    (["model.gamma_d=0"], "model.gamma_d"),
    (["train.device=gpu"], "train.device"),
    (["model.precision=int8-search", "train.device=cuda"], "model.precision"),
    (["data.holdout_fraction=0.9"], "data.holdout_fraction"),
    (["evaluation.threshold_quantile=0"], "evaluation.threshold_quantile"),
])
def test_impossible_values_are_rejected_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert key in str(err.value)


@pytest.mark.parametrize("crop", [64, 96, 224])
def test_gamma_c_limited_by_number_of_patches(crop):
    positions = (crop // 4) ** 2
    base = [f"data.resize={crop}", f"data.crop={crop}", "model.K=1", "model.J=0"]
    assert load_config(None, base + [f"model.gamma_c={positions}"]).model.gamma_c == positions
    with pytest.raises(ConfigError) as err:
        load_config(None, base + [f"model.gamma_c={positions + 1}"])
    assert "model.gamma_c" in str(err.value)


def test_k_plus_j_limited_by_memory_bank_size():
    # crop 64 -> 16x16 = 256 positions; gamma_c 32 -> 8 centres
    base = ["data.resize=64", "data.crop=64", "model.gamma_c=32"]
    cfg = load_config(None, base + ["model.K=5", "model.J=3"])
    assert cfg.model.K + cfg.model.J == 8
    with pytest.raises(ConfigError) as err:
        load_config(None, base + ["model.K=5", "model.J=4"])
    assert "model.K" in str(err.value) and "model.J" in str(err.value)


def test_weights_with_pretrained_false_is_contradictory():
    with pytest.raises(ConfigError, match="model.weights"):
        load_config(None, ["model.pretrained=false", "model.weights=/x.pth"])


# --------------------------------------------------------------------------- overrides
def test_parse_overrides_builds_nested_text_that_the_config_types():
    items = ["model.backbone=resnet18", "train.epochs=5", "model.pretrained=false", "train.lr=0.01",
             "output_dir=out", "model.weights=null"]
    assert parse_overrides(items) == {"model": {"backbone": "resnet18", "pretrained": "false", "weights": "null"},
                                      "train": {"epochs": "5", "lr": "0.01"}, "output_dir": "out"}
    cfg = load_config(None, items)
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.weights) == ("resnet18", False, None)
    assert (cfg.train.epochs, cfg.train.lr, cfg.output_dir) == (5, 0.01, "out")


def test_overrides_are_applied_after_the_file_and_typed(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"epochs": 9, "lr": 0.5}, "model": {"backbone": "resnet18"}})
    cfg = load_config(path, ["train.epochs=2", "model.pretrained=no", "model.alpha=1", "train.lr=1e-4",
                             "model.gamma_c=2.0", "data.category=screw"])
    assert cfg.train.epochs == 2 and type(cfg.train.epochs) is int
    assert cfg.model.pretrained is False
    assert cfg.model.alpha == 1.0 and type(cfg.model.alpha) is float
    assert cfg.train.lr == pytest.approx(1e-4) and type(cfg.train.lr) is float
    assert cfg.model.gamma_c == 2 and type(cfg.model.gamma_c) is int
    assert cfg.model.backbone == "resnet18"  # from the file
    assert cfg.data.category == "screw"


@pytest.mark.parametrize("item", ["train.epochs", "=3", "a.b.c=1"])
def test_malformed_overrides_are_rejected(item):
    with pytest.raises(ConfigError):
        parse_overrides([item])


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.bogus=1"])
    assert "model.bogus" in str(err.value)


def test_string_overrides_keep_their_text():
    cfg = load_config(None, ["data.category=01", "data.root=2024_01"])
    assert cfg.data.category == "01"
    assert cfg.data.root == "2024_01"


def test_apply_dict_rejects_non_mapping():
    with pytest.raises(ConfigError):
        apply_dict(Config(), ["data"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shipped category configs
@pytest.mark.skipif(not CONFIG_FILES, reason=f"no category YAML files in {CONFIG_DIR} yet")
@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def test_shipped_category_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.category == path.stem


@pytest.mark.skipif(not CONFIG_FILES, reason=f"no category YAML files in {CONFIG_DIR} yet")
def test_shipped_configs_cover_the_15_mvtec_categories():
    categories = [load_config(p).data.category for p in CONFIG_FILES]
    assert len(categories) == len(set(categories))
    assert set(categories) == set(config.MVTEC_CATEGORIES)


def test_unknown_backbone_is_rejected_with_the_choices_before_any_model_work():
    with pytest.raises(ConfigError, match="model.backbone = 'resnet19'.*wide_resnet50_2"):
        load_config(None, ["model.backbone=resnet19"])
