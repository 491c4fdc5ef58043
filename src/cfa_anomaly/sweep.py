"""The settings a benchmark grid sweeps: `--grid KEY=a,b` (and `--backbones a b`) as config overrides.

Each Setting is one point of the product of the swept keys: its overrides, the table row's label and the
folder its cells go to. Sweeping only model.backbone keeps the names of a backbone grid (the backbone
alone), so grids made before --grid existed resume.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cfa_anomaly.config import Config, ConfigError, apply_dict, parse_overrides

BACKBONE_KEY = "model.backbone"
# Keys a grid cannot sweep: where data lives and what a cell is called are not settings; seeds are
# replicates of a setting, not another setting (their spread is shown), so they have their own option.
NOT_SWEPT = {"data.root": "the data folder is --root", "data.category": "categories are --categories",
             "output_dir": "cells go under --output",
             "train.seed": "seeds are --seeds (their spread is shown)"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


@dataclass(frozen=True)
class Setting:
    """One point of the grid: overrides applied to every category's config, the row label, the folder."""

    overrides: tuple[tuple[str, str], ...]
    label: str
    folder: str

    def as_overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.overrides]


@dataclass(frozen=True)
class Axis:
    """One --grid item: its keys (several when tied: they change together) and their values per step."""

    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]


def parse_axis(item: str, swept: set[str]) -> Axis:
    """"data.crop=224,320" -> Axis(("data.crop",), (("224",), ("320",))); tied keys:
    "data.resize+data.crop=256+224,366+320". ConfigError names the item when it cannot be swept."""
    head, sep, raw = item.partition("=")
    keys = tuple(key.strip() for key in head.split("+"))
    steps = [tuple(part.strip() for part in (step.split("+") if len(keys) > 1 else [step]))
             for step in raw.split(",")]
    if not sep or not all(keys) or not all(all(step) for step in steps):
        raise ConfigError(f"--grid {item!r} must look like section.key=value1,value2 (e.g. "
                          "data.crop=224,320), or tie keys as key1+key2=a1+a2,b1+b2, without empty values")
    if any(len(step) != len(keys) for step in steps):
        raise ConfigError(f"--grid {item!r}: every value needs one part per key ({len(keys)}), joined by +")
    for key in keys:
        if key in NOT_SWEPT:
            raise ConfigError(f"--grid {item!r}: {key} cannot be swept; {NOT_SWEPT[key]}")
        if key in swept or keys.count(key) > 1:
            raise ConfigError(f"--grid {item!r}: {key} is swept twice; give all its values in one item")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"--grid {item!r}: a value is repeated")
    for step in steps:  # each key exists and each value has its type (apply_dict names them)
        pairs = [f"{key}={value}" for key, value in zip(keys, step)]
        apply_dict(Config(), parse_overrides(pairs), source=f"--grid {item!r}")
        if BACKBONE_KEY in keys:
            _check_backbone(step[keys.index(BACKBONE_KEY)])
    return Axis(keys, tuple(steps))


def parse_axes(items: Sequence[str]) -> list[Axis]:
    """Every --grid item (see parse_axis); a key may be swept by one item only."""
    axes: list[Axis] = []
    for item in items:
        axes.append(parse_axis(item, {key for axis in axes for key in axis.keys}))
    return axes


def _check_backbone(name: str) -> None:
    """A backbone name known to the registry (other checks of a default config do not apply to it)."""
    from cfa_anomaly.backbones import BACKBONES

    if name not in BACKBONES:
        raise ConfigError(f"--grid / --backbones: model.backbone = {name!r} is unknown; choose one of: "
                          f"{', '.join(BACKBONES)}")


def _folder_part(key: str, value: str) -> str:
    """key=value as a safe folder name; a value that had to be changed gets a short hash of itself, so that
    two values never share a folder."""
    safe = _UNSAFE.sub("_", value)
    if safe != value:
        safe += "-" + hashlib.sha1(value.encode()).hexdigest()[:8]
    return f"{key}={safe}"


def settings_grid(axes: Sequence[Axis]) -> list[Setting]:
    """The product of the axes in the order given (the last varies fastest); a swept value is applied after
    the config file and --set, as one more layer. No axes: one setting without overrides (the config's)."""
    if not axes:
        return [Setting((), "", "")]
    backbone_only = [axis.keys for axis in axes] == [(BACKBONE_KEY,)]
    settings = []
    for steps in itertools.product(*(axis.values for axis in axes)):
        pairs = tuple(pair for axis, step in zip(axes, steps) for pair in zip(axis.keys, step))
        if backbone_only:
            name = pairs[0][1]
            settings.append(Setting(pairs, name, _UNSAFE.sub("_", name)))
        else:
            settings.append(Setting(pairs, ", ".join(f"{k}={v}" for k, v in pairs),
                                    _short("+".join(_folder_part(k, v) for k, v in pairs))))
    return settings


MAX_FOLDER = 120  # file systems allow 255 bytes per name: long combinations are cut and get a hash


def _short(folder: str) -> str:
    """folder itself, or when too long its start and a hash of the whole (still one per setting)."""
    if len(folder) <= MAX_FOLDER:
        return folder
    return f"{folder[:MAX_FOLDER - 9]}-{hashlib.sha1(folder.encode()).hexdigest()[:8]}"


def setting_row(setting: Setting, cfg: Config | None) -> str:
    """The table row of a setting: its label, or for the config's own setting the backbone it resolved to."""
    if setting.label:
        return setting.label
    return cfg.model.backbone if cfg is not None else "default"
