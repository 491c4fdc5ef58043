"""Typed configuration: the root Config, YAML in and out, overrides and validation with clear errors.

The sections' dataclasses, with what each key does, are in config_sections.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cfa_anomaly.config_sections import DataConfig, EvaluationConfig, ModelConfig, TrainConfig
from cfa_anomaly.errors import CfaError

MVTEC_CATEGORIES: tuple[str, ...] = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor",
    "zipper",
)


PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed", "bfloat16", "int8-search", "projected-search")
COMPILE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")
VALIDATIONS: tuple[str, ...] = ("synthetic",)
SELECTIONS: tuple[str, ...] = ("final", "best-validation")
TRACKERS: tuple[str, ...] = ("tensorboard", "mlflow")  # train.log: tracking.py
LAYOUTS: tuple[str, ...] = ("mvtec", "folder", "visa", "mvtec_ad_2", "btad", "loco")
# evaluation.pixel_threshold_method
PIXEL_METHODS: tuple[str, ...] = ("synthetic-peak", "synthetic-f1", "quantile")
FOLDER_KEYS: tuple[str, ...] = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


class ConfigError(CfaError, ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str = "runs"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values, as saved in YAML files and checkpoints."""
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check values before any expensive work; raise ConfigError naming the key and the allowed range."""
        checks = [  # every value is checked before the first problem is reported, in this order
            *_data_checks(self.data),
            *_evaluation_checks(self.evaluation),
            *_model_checks(self.model, self.data.input_size),
            *_train_checks(self.train),
            *_cross_section_checks(self),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{key} = {_get(self, key)!r} is invalid: it must be {allowed}")
        _check_layout(self.data)
        _check_model_choices(self.model)
        _check_device(self.model, self.train.device)
        _check_memory_bank(self.model, self.data.input_size)
        return self


# (dotted key, whether its value is allowed, what it must be)
_Check = tuple[str, bool, str]


def _data_checks(data: DataConfig) -> list[_Check]:
    """Ranges of the data section's numbers, and the settings that data.tile rules out."""
    return [
        ("data.resize", data.resize > 0, "a positive integer"),
        ("data.crop", 0 < data.crop <= data.resize, f"a positive integer <= data.resize ({data.resize})"),
        ("data.batch_size", data.batch_size > 0, "a positive integer"),
        ("data.tile", data.tile == 0 or 32 <= data.tile <= data.resize,
         f"0 (no tiles) or from 32 to data.resize ({data.resize})"),
        ("data.tile_overlap", 0.0 <= data.tile_overlap <= 0.75, "a number from 0 to 0.75"),
        ("data.crop", data.tile == 0 or data.crop == data.resize,
         f"equal to data.resize ({data.resize}) when data.tile is set: the tiles cover the whole image"),
        ("data.keep_aspect", data.tile == 0 or not data.keep_aspect,
         "false when data.tile is set (the image is resized to data.resize square, then tiled)"),
        ("data.validation", data.tile == 0 or data.validation is None,
         "null when data.tile is set (validation scores whole images, not tiles)"),
        ("data.num_workers", data.num_workers >= 0, "an integer >= 0"),
        ("data.holdout_fraction", 0.0 <= data.holdout_fraction <= 0.5, "a number from 0 to 0.5"),
        ("data.normal_test_fraction", 0.0 < data.normal_test_fraction <= 0.5,
         "a number above 0 and at most 0.5"),
    ]


def _evaluation_checks(evaluation: EvaluationConfig) -> list[_Check]:
    """Ranges of the thresholds, cross-fitting and GIF settings."""
    return [
        ("evaluation.threshold_quantile", 0.0 < evaluation.threshold_quantile <= 1.0, "a number in (0, 1]"),
        ("evaluation.pixel_threshold_quantile", 0.0 < evaluation.pixel_threshold_quantile <= 1.0,
         "a number in (0, 1]"),
        ("evaluation.pixel_threshold_method", evaluation.pixel_threshold_method in PIXEL_METHODS,
         f"one of {', '.join(PIXEL_METHODS)}"),
        ("evaluation.cross_fit_folds", evaluation.cross_fit_folds >= 2, "an integer >= 2"),
        ("evaluation.cross_fit_below", evaluation.cross_fit_below >= 0, "an integer >= 0 (0: never)"),
        ("evaluation.gif_good_frames", evaluation.gif_good_frames >= 0, "an integer >= 0"),
        ("evaluation.gif_max_frames", evaluation.gif_max_frames >= 1, "an integer >= 1"),
        ("evaluation.gif_width", evaluation.gif_width >= 64, "an integer >= 64"),
    ]


def _model_checks(model: ModelConfig, input_size: int) -> list[_Check]:
    """Ranges of the model's numbers; the blur must fit the model's input."""
    return [
        ("model.gamma_c", model.gamma_c >= 1, "an integer >= 1"),
        ("model.gamma_d", model.gamma_d >= 1, "an integer >= 1"),
        ("model.K", model.K >= 1, "an integer >= 1"),
        ("model.J", model.J >= 0, "an integer >= 0"),
        ("model.nu", model.nu > 0, "a positive number"),
        ("model.alpha", model.alpha >= 0, "a number >= 0"),
        ("model.radius_init", model.radius_init >= 0, "a number >= 0"),
        ("model.blur_sigma", model.blur_sigma >= 0, "a number >= 0 (0 disables smoothing)"),
        ("model.blur_sigma", int(4.0 * model.blur_sigma + 0.5) < input_size,
         f"small enough that the Gaussian's radius round(4 sigma) is below the model's input size "
         f"({input_size})"),
        ("model.kmeans_iters", model.kmeans_iters >= 1, "an integer >= 1"),
    ]


def _train_checks(train: TrainConfig) -> list[_Check]:
    """Ranges of the training schedule's numbers."""
    return [
        ("train.epochs", train.epochs >= 0, "an integer >= 0"),
        ("train.lr", train.lr > 0, "a positive number"),
        ("train.weight_decay", train.weight_decay >= 0, "a number >= 0"),
        ("train.validate_every", train.validate_every >= 1, "an integer >= 1"),
        ("train.log", train.log in (None, *TRACKERS), f"none or one of {', '.join(TRACKERS)}"),
    ]


def _cross_section_checks(cfg: Config) -> list[_Check]:
    """Label-free validation and epoch selection: allowed names, and what each needs from the others."""
    return [
        ("data.validation", cfg.data.validation in (None, *VALIDATIONS),
         f"null (none) or one of {', '.join(VALIDATIONS)}"),
        ("train.select", cfg.train.select in SELECTIONS, f"one of {', '.join(SELECTIONS)}"),
        ("train.select", cfg.train.select != "best-validation" or cfg.data.validation is not None,
         "final unless data.validation is set (best-validation selects by its scores)"),
        ("data.validation", cfg.data.validation is None or cfg.data.holdout_fraction > 0
         or bool(cfg.data.holdout_dir) or cfg.data.layout in ("mvtec_ad_2", "loco"),  # own validation
         "none without held-out normal images (set data.holdout_fraction > 0 or data.holdout_dir)"),
    ]


def _check_model_choices(model: ModelConfig) -> None:
    """Weights, backbone, precision and compile setting; a YAML on/off is read as the compile setting."""
    if model.pretrained is False and model.weights:
        raise ConfigError("model.weights is set but model.pretrained is false: remove one of them")
    from cfa_anomaly.backbones import BACKBONES  # the registry is the one list of names

    if model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone = {model.backbone!r} is unknown; choose one of: "
                          f"{', '.join(BACKBONES)}")
    if model.precision not in PRECISIONS:
        raise ConfigError(f"model.precision = {model.precision!r} is invalid: use one of "
                          f"{', '.join(PRECISIONS)}")
    # YAML reads a bare on/off as a boolean, which arrives here as "True"/"False"
    compile_setting = model.compile
    model.compile = {"true": "on", "false": "off"}.get(compile_setting.lower(), compile_setting)
    if model.compile not in COMPILE_SETTINGS:
        raise ConfigError(f"model.compile = {model.compile!r} is invalid: use one of "
                          f"{', '.join(COMPILE_SETTINGS)}")


def _check_device(model: ModelConfig, device: str) -> None:
    """train.device is auto, cpu, cuda or cuda:N, and int8-search runs on a CPU only."""
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"train.device = {device!r} is invalid: use auto, cpu, cuda or cuda:N")
    if model.precision == "int8-search" and device.startswith("cuda"):
        raise ConfigError(f"model.precision = int8-search runs on a CPU only, but train.device = "
                          f"{device!r}: use model.precision=mixed (or auto) on a GPU")


def _check_memory_bank(model: ModelConfig, input_size: int) -> None:
    """Memory-bank size limits that depend on the feature-map size (stride 4 of the model's input)."""
    positions = (input_size // 4) ** 2
    centres = positions // model.gamma_c
    if centres < 1:
        raise ConfigError(
            f"model.gamma_c = {model.gamma_c} is too large: the {input_size}px input gives "
            f"{positions} patch positions, so gamma_c must be <= {positions}"
        )
    if model.K + model.J > centres:
        raise ConfigError(
            f"model.K + model.J = {model.K + model.J} exceeds the memory bank size {centres} "
            f"(input {input_size}px, gamma_c {model.gamma_c}); lower K/J or gamma_c"
        )


def _check_layout(data: DataConfig) -> None:
    """data.layout and its folder keys: required ones set, unused ones absent, every folder separate."""
    if data.layout not in LAYOUTS:
        raise ConfigError(f"data.layout = {data.layout!r} is invalid: use one of {', '.join(LAYOUTS)}")
    given = {f"data.{key}": getattr(data, key) for key in FOLDER_KEYS if getattr(data, key)}
    if data.layout != "folder":
        if given:
            raise ConfigError(f"{next(iter(given))} is set but data.layout is {data.layout!r}: set "
                              "data.layout=folder (cfa train --normal-dir does) or remove it")
        return
    if not data.normal_dir:
        raise ConfigError("data.layout is 'folder' but data.normal_dir is not set: give the folder of "
                          "defect-free training images (cfa train --normal-dir DIR)")
    for key in ("normal_test_dir", "mask_dir"):
        if getattr(data, key) and not data.abnormal_dir:
            raise ConfigError(f"data.{key} is set but data.abnormal_dir is not: a test split needs defective "
                              f"images; set data.abnormal_dir (--abnormal-dir) or remove data.{key}")
    if data.holdout_dir:
        given["data.holdout_dir"] = data.holdout_dir
    resolved = {key: Path(value).expanduser().resolve() for key, value in given.items()}
    for (key_a, a), (key_b, b) in itertools.combinations(resolved.items(), 2):
        if a.is_relative_to(b) or b.is_relative_to(a):
            raise ConfigError(f"{key_a} = {given[key_a]!r} and {key_b} = {given[key_b]!r} overlap (the same "
                              "folder, or one inside the other): give each its own folder")


def _get(cfg: Config, dotted: str) -> Any:
    """The value of a dotted key such as "model.K" (or a top-level one such as "output_dir")."""
    section, _, name = dotted.partition(".")
    return getattr(getattr(cfg, section), name) if name else getattr(cfg, section)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise ConfigError naming the key."""
    hints = typing.get_args(annotation) or (annotation,)
    allows_none = type(None) in hints
    base = next((h for h in hints if h is not type(None)), annotation)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if allows_none:
            return None
        raise ConfigError(f"{key} must not be empty: give a {base.__name__}")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if base is int:
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{key} = {value!r} has the wrong type: expected {base.__name__}")


def _section_types(section_cls: type) -> dict[str, Any]:
    """Each field's annotated type, by name."""
    return typing.get_type_hints(section_cls)


def apply_dict(cfg: Config, values: dict[str, Any], source: str = "config") -> Config:
    """Apply nested values to cfg; unknown sections or keys are rejected by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, train), "
                          f"got {type(values).__name__}")
    top_types = _section_types(Config)
    for section, content in values.items():
        if section not in top_types:
            raise ConfigError(f"{source}: unknown key {section!r}; known keys: {', '.join(top_types)}")
        if section == "output_dir":
            cfg.output_dir = _coerce("output_dir", content, str)
            continue
        if not isinstance(content, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of keys to values")
        target = getattr(cfg, section)
        types = _section_types(type(target))
        for key, value in content.items():
            if key not in types:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}; known keys in {section}: {', '.join(types)}"
                )
            setattr(target, key, _coerce(f"{section}.{key}", value, types[key]))
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ["model.backbone=resnet18", "train.epochs=5"] into a nested dict.

    Values stay text ("01" stays "01" for a string key); typed keys are converted by the config itself.
    """
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=10")
        value = raw
        parts = key.split(".")
        if len(parts) > 2:
            raise ConfigError(f"override {item!r}: keys have at most two parts (section.key)")
        if len(parts) == 1:
            nested[parts[0]] = value
        else:
            nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then command-line overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        apply_dict(cfg, content, source=str(path))
    if overrides:
        apply_dict(cfg, parse_overrides(overrides), source="command line")
    return cfg.validate()


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict (e.g. from a checkpoint)."""
    return apply_dict(Config(), values, source="checkpoint config").validate()


def save_config(cfg: Config, path: Path) -> None:
    """Write cfg as YAML, atomically (a crash leaves the old file or the new one)."""
    from cfa_anomaly.io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
