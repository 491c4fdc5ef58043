"""Typed configuration: dataclasses, YAML in and out, overrides and validation with clear errors."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cfa_anomaly.errors import CfaError

MVTEC_CATEGORIES: tuple[str, ...] = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)


PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed", "bfloat16", "int8-search")
COMPILE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")
VALIDATIONS: tuple[str, ...] = ("synthetic",)
SELECTIONS: tuple[str, ...] = ("final", "best-validation")
LAYOUTS: tuple[str, ...] = ("mvtec", "folder")
PIXEL_METHODS: tuple[str, ...] = ("synthetic-peak", "synthetic-f1", "quantile")  # evaluation.pixel_threshold_method
FOLDER_KEYS: tuple[str, ...] = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


class ConfigError(CfaError, ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


@dataclass
class DataConfig:
    # mvtec: <root>/<category>/{train/good, test/<type>, ground_truth/<defect>}. folder: the *_dir keys below.
    layout: str = "mvtec"
    root: str = "data/mvtec_ad"  # mvtec layout: folder that holds <category>/train, test, ground_truth
    category: str = "bottle"  # the category folder (mvtec layout) and the run's name in outputs and tables
    # Folder layout (data.layout=folder). Relative paths are relative to the current folder, as on the
    # command line (data.root is not used). normal_dir: defect-free training images (required).
    # abnormal_dir: defective test images, directly or in one sub-folder per defect type (without it there
    # is no test split). normal_test_dir: defect-free test images; when absent, a fixed seeded
    # normal_test_fraction of normal_dir is tested instead (the same whatever train.seed; never trained on).
    # mask_dir: masks named <stem>.png or <stem>_mask.png, in abnormal_dir's sub-folders if it has them;
    # without masks (or a sub-folder of them) defective images get image metrics only.
    normal_dir: str | None = None
    abnormal_dir: str | None = None
    normal_test_dir: str | None = None
    mask_dir: str | None = None
    normal_test_fraction: float = 0.2
    # Geometry: images are resized to resize x resize, then the central crop x crop square is scored. The
    # default scores the whole image (crop = resize), so no defect at the border is lost; the MVTec AD
    # configs keep the paper's benchmark convention (resize 256, crop 224: 16 px of every border unseen).
    resize: int = 224
    crop: int = 224
    # false: images are squashed to resize x resize. true: the short side is resized to `resize` and the
    # long side in proportion, so non-square products keep their shape, and the central crop x crop square
    # is scored (a long image's ends are then not inspected). Masks get the same geometry; maps are mapped
    # back the same way.
    keep_aspect: bool = False
    # Tiles for high-resolution images (tiling.py): 0 = off. N > 0: the resize x resize image (data.crop
    # must equal data.resize) is cut into N x N squares overlapping by tile_overlap of their side, each the
    # model's input; their maps are blended into one map of the whole image. E.g. resize 2048, tile 256.
    tile: int = 0
    tile_overlap: float = 0.25
    batch_size: int = 4
    num_workers: int = 0
    # Normal images held out of training to set the decision threshold (never the test set):
    # a seeded fraction of train/good, or a folder of normal images given here.
    holdout_fraction: float = 0.1
    holdout_dir: str | None = None
    @property
    def input_size(self) -> int:
        """The side of the model's input: a tile, or the crop."""
        return self.tile or self.crop

    # Label-free validation: null (none), or synthetic: defects painted onto the held-out normal images,
    # scored every train.validate_every epochs (validation.py). Needs held-out images; test labels unused.
    validation: str | None = None
    # A training image that cannot be read stops the run (default) or, when true, is skipped and listed.
    skip_bad_images: bool = False


@dataclass
class ModelConfig:
    backbone: str = "wide_resnet50_2"
    pretrained: bool = True  # false means random backbone weights: only for tests and timing
    weights: str | None = None  # local weights file for the backbone; None: offline package or download
    gamma_c: int = 1  # memory bank compression: H*W // gamma_c centres (k-means when > 1)
    gamma_d: int = 1  # descriptor width: backbone channels // gamma_d
    K: int = 3  # nearest centres attracted (and used for scoring)
    J: int = 3  # next nearest centres repelled (K+1 .. K+J)
    nu: float = 1e-3
    alpha: float = 0.1
    radius_init: float = 1e-5
    blur_sigma: float = 4.0
    kmeans_iters: int = 100
    # float32: float32 arithmetic throughout. mixed: the descriptor and the nearest-centre search in
    # bfloat16 (the training hot loop), the backbone in float32. bfloat16: the backbone too (fastest
    # inference). int8-search (CPU only): float32, but the nearest-centre search's candidates come from an
    # int8 product (one scale per point and per centre, exact int32 sums), 8 extra re-ranked in float32:
    # for CPUs without bfloat16 units whose int8 dot products are fast (VNNI, AMX-INT8). auto: mixed where
    # the hardware has bfloat16 matrix instructions and a probe finds them faster; else int8-search where a
    # probe finds that search faster than float32's (model/kernels.py); else float32.
    # Distances, loss and scores are float32 in every mode, but mixed and bfloat16 are not exact: their
    # nearest centres are bfloat16-ranked candidates re-ranked in float32, and on the real grid and
    # hazelnut test patches a true neighbour was missed (a centre >0.1% farther returned) for 0.005-0.022%
    # of patches at K = 3 and 0.014-0.047% at K + J = 6, at worst 0.55% farther (benchmarks/README.md,
    # `python benchmarks/speed.py --neighbours`). Metrics: within 0.0005 of float32 there (mixed).
    precision: str = "auto"
    # Opt-in, under mixed: the backbone's last stage (after its stride-8 map) in bfloat16, where the
    # backbone's convolutions are packed for oneDNN (a CPU with bfloat16 support, model.compile auto or on,
    # a network torch.fx traces: the ResNets, VGG, mobilenet_v2; elsewhere it stays float32 and a warning
    # says so). Its convolutions accumulate in float32 and the residual stream stays float32.
    # wide_resnet50_2 inferred 1.25x faster with it on an AMX Xeon, but on the real grid images the maps
    # correlated 0.99988 with the float32 graph's on the same checkpoint (mobilenet_v2; 0.99999 without),
    # under the 0.9999 that the default path keeps, so it is off by default (benchmarks/README.md).
    last_stage_bfloat16: bool = False
    # true: the descriptor is applied to each backbone layer at its own resolution and only its products
    # are resized (equal to resizing the maps first, both being linear; a quarter of the work for
    # wide_resnet50_2). false: the maps are resized and concatenated first, the paper's literal order;
    # with precision float32 this is the plain reference path.
    per_layer_projection: bool = True
    # Graph optimisations that keep the arithmetic (equal up to float32 rounding): auto and on fold the
    # frozen backbone's batch norms into its convolutions (on a CPU in float32 also packing their weights
    # for oneDNN once and fusing the ReLUs after them), and torch.compile (inductor) the descriptor
    # step's memory-bound part (resize, sums, norms, search rows) into a few fused loops. auto compiles
    # the training batch shape, where it can (a CPU with a C++ compiler; GPUs run eagerly) and the step is
    # large (wide backbones); other shapes (a last partial batch, scoring in a new process) run eagerly.
    # on: every shape, or fail; off: neither (the plain eager path). Compiling costs seconds once per
    # process and shape (benchmarks/README.md); when it fails the step runs eagerly and a warning says why.
    compile: str = "auto"


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # final: the last epoch's model (the paper's fixed schedule). best-validation: the epoch with the best
    # synthetic-validation AUPRO (needs data.validation=synthetic).
    select: str = "final"
    validate_every: int = 5  # epochs between validations (data.validation=synthetic); the last is always


@dataclass
class EvaluationConfig:
    # Decision threshold: this conformal quantile of the held-out normal image scores (a new normal part
    # exceeds it with probability at most 1 - quantile; with too few held-out images, their highest score,
    # and the run says which false-alarm rate that gives).
    threshold_quantile: float = 0.99
    # With fewer than cross_fit_below held-out normal images (a small set: their highest score would flag
    # many good parts), cross_fit_folds more models, each trained without one fold of the training images,
    # add those images' out-of-fold scores to the held-out ones behind the decision threshold (crossfit.py).
    # cross_fit_below = 0: never.
    cross_fit_folds: int = 5
    cross_fit_below: int = 20
    # Pixel threshold (outlines, defect masks, defect_area), calibration.py: quantile takes
    # pixel_threshold_quantile of the held-out normal images' pixel scores; synthetic-peak (from that level,
    # the fraction of the way to each image's peak with the best pixel F1 on defects painted onto the
    # held-out images) and synthetic-f1 (the one level with the best F1 there) use the painted defects.
    # metrics.json reports the outcome of each.
    pixel_threshold_method: str = "synthetic-peak"
    pixel_threshold_quantile: float = 0.999
    panels: bool = True  # one PNG per test image
    gif_good_frames: int = 3
    gif_max_frames: int = 30
    gif_width: int = 640


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str = "runs"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check values before any expensive work; raise ConfigError naming the key and the allowed range."""
        checks: list[tuple[str, bool, str]] = [
            ("data.resize", self.data.resize > 0, "a positive integer"),
            ("data.crop", 0 < self.data.crop <= self.data.resize, f"a positive integer <= data.resize ({self.data.resize})"),
            ("data.batch_size", self.data.batch_size > 0, "a positive integer"),
            ("data.tile", self.data.tile == 0 or 32 <= self.data.tile <= self.data.resize,
             f"0 (no tiles) or from 32 to data.resize ({self.data.resize})"),
            ("data.tile_overlap", 0.0 <= self.data.tile_overlap <= 0.75, "a number from 0 to 0.75"),
            ("data.crop", self.data.tile == 0 or self.data.crop == self.data.resize,
             f"equal to data.resize ({self.data.resize}) when data.tile is set: the tiles cover the whole image"),
            ("data.keep_aspect", self.data.tile == 0 or not self.data.keep_aspect,
             "false when data.tile is set (the image is resized to data.resize square, then tiled)"),
            ("data.validation", self.data.tile == 0 or self.data.validation is None,
             "null when data.tile is set (validation scores whole images, not tiles)"),
            ("data.num_workers", self.data.num_workers >= 0, "an integer >= 0"),
            ("data.holdout_fraction", 0.0 <= self.data.holdout_fraction <= 0.5, "a number from 0 to 0.5"),
            ("data.normal_test_fraction", 0.0 < self.data.normal_test_fraction <= 0.5,
             "a number above 0 and at most 0.5"),
            ("evaluation.threshold_quantile", 0.0 < self.evaluation.threshold_quantile <= 1.0,
             "a number in (0, 1]"),
            ("evaluation.pixel_threshold_quantile", 0.0 < self.evaluation.pixel_threshold_quantile <= 1.0,
             "a number in (0, 1]"),
            ("evaluation.pixel_threshold_method", self.evaluation.pixel_threshold_method in PIXEL_METHODS,
             f"one of {', '.join(PIXEL_METHODS)}"),
            ("evaluation.cross_fit_folds", self.evaluation.cross_fit_folds >= 2, "an integer >= 2"),
            ("evaluation.cross_fit_below", self.evaluation.cross_fit_below >= 0, "an integer >= 0 (0: never)"),
            ("evaluation.gif_good_frames", self.evaluation.gif_good_frames >= 0, "an integer >= 0"),
            ("evaluation.gif_max_frames", self.evaluation.gif_max_frames >= 1, "an integer >= 1"),
            ("evaluation.gif_width", self.evaluation.gif_width >= 64, "an integer >= 64"),
            ("model.gamma_c", self.model.gamma_c >= 1, "an integer >= 1"),
            ("model.gamma_d", self.model.gamma_d >= 1, "an integer >= 1"),
            ("model.K", self.model.K >= 1, "an integer >= 1"),
            ("model.J", self.model.J >= 0, "an integer >= 0"),
            ("model.nu", self.model.nu > 0, "a positive number"),
            ("model.alpha", self.model.alpha >= 0, "a number >= 0"),
            ("model.radius_init", self.model.radius_init >= 0, "a number >= 0"),
            ("model.blur_sigma", self.model.blur_sigma >= 0, "a number >= 0 (0 disables smoothing)"),
            ("model.blur_sigma", int(4.0 * self.model.blur_sigma + 0.5) < self.data.input_size,
             f"small enough that the Gaussian's radius round(4 sigma) is below the model's input size "
             f"({self.data.input_size})"),
            ("model.kmeans_iters", self.model.kmeans_iters >= 1, "an integer >= 1"),
            ("train.epochs", self.train.epochs >= 0, "an integer >= 0"),
            ("train.lr", self.train.lr > 0, "a positive number"),
            ("train.weight_decay", self.train.weight_decay >= 0, "a number >= 0"),
            ("train.validate_every", self.train.validate_every >= 1, "an integer >= 1"),
            ("data.validation", self.data.validation in (None, *VALIDATIONS),
             f"null (none) or one of {', '.join(VALIDATIONS)}"),
            ("train.select", self.train.select in SELECTIONS, f"one of {', '.join(SELECTIONS)}"),
            ("train.select", self.train.select != "best-validation" or self.data.validation is not None,
             "final unless data.validation is set (best-validation selects by its scores)"),
            ("data.validation", self.data.validation is None or self.data.holdout_fraction > 0
             or bool(self.data.holdout_dir),
             "none without held-out normal images (set data.holdout_fraction > 0 or data.holdout_dir)"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{key} = {_get(self, key)!r} is invalid: it must be {allowed}")
        _check_layout(self.data)
        if self.model.pretrained is False and self.model.weights:
            raise ConfigError("model.weights is set but model.pretrained is false: remove one of them")
        from cfa_anomaly.backbones import BACKBONES  # the registry is the one list of names

        if self.model.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone = {self.model.backbone!r} is unknown; choose one of: "
                              f"{', '.join(BACKBONES)}")
        if self.model.precision not in PRECISIONS:
            raise ConfigError(f"model.precision = {self.model.precision!r} is invalid: use one of "
                              f"{', '.join(PRECISIONS)}")
        # YAML reads a bare on/off as a boolean, which arrives here as "True"/"False"
        compile_setting = self.model.compile
        self.model.compile = {"true": "on", "false": "off"}.get(compile_setting.lower(), compile_setting)
        if self.model.compile not in COMPILE_SETTINGS:
            raise ConfigError(f"model.compile = {self.model.compile!r} is invalid: use one of "
                              f"{', '.join(COMPILE_SETTINGS)}")
        device = self.train.device
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(f"train.device = {device!r} is invalid: use auto, cpu, cuda or cuda:N")
        if self.model.precision == "int8-search" and device.startswith("cuda"):
            raise ConfigError(f"model.precision = int8-search runs on a CPU only, but train.device = "
                              f"{device!r}: use model.precision=mixed (or auto) on a GPU")
        # Memory-bank size limits that depend on the feature-map size (stride 4 of the crop).
        positions = (self.data.input_size // 4) ** 2
        centres = positions // self.model.gamma_c
        if centres < 1:
            raise ConfigError(
                f"model.gamma_c = {self.model.gamma_c} is too large: the {self.data.input_size}px input gives "
                f"{positions} patch positions, so gamma_c must be <= {positions}"
            )
        if self.model.K + self.model.J > centres:
            raise ConfigError(
                f"model.K + model.J = {self.model.K + self.model.J} exceeds the memory bank size {centres} "
                f"(input {self.data.input_size}px, gamma_c {self.model.gamma_c}); lower K/J or gamma_c"
            )
        return self


def _check_layout(data: DataConfig) -> None:
    """data.layout and its folder keys: required ones set, unused ones absent, every folder separate."""
    if data.layout not in LAYOUTS:
        raise ConfigError(f"data.layout = {data.layout!r} is invalid: use one of {', '.join(LAYOUTS)}")
    given = {f"data.{key}": getattr(data, key) for key in FOLDER_KEYS if getattr(data, key)}
    if data.layout == "mvtec":
        if given:
            raise ConfigError(f"{next(iter(given))} is set but data.layout is 'mvtec': set "
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
    return typing.get_type_hints(section_cls)


def apply_dict(cfg: Config, values: dict[str, Any], source: str = "config") -> Config:
    """Apply nested values to cfg; unknown sections or keys are rejected by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, train), got {type(values).__name__}")
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
    from cfa_anomaly.io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
