"""Unreadable files are found before any model work: named, and skipped only when asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cfa_anomaly.config import load_config
from cfa_anomaly.data.images import unreadable
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.run_data import check_data
from conftest import SYNTH_CATEGORY


@pytest.fixture()
def data_copy(synth_root, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synth_root / SYNTH_CATEGORY, root / SYNTH_CATEGORY)
    return root


def config_for(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", f"data.category={SYNTH_CATEGORY}", "data.holdout_fraction=0",
                              *extra])


def break_file(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("this is not an image")


@pytest.mark.parametrize("how", ["empty", "truncated", "text"])
def test_bad_training_image_stops_with_its_name_or_is_skipped_when_asked(data_copy, how):
    bad = data_copy / SYNTH_CATEGORY / "train" / "good" / "002.png"
    break_file(bad, how)
    assert unreadable(bad) is not None
    with pytest.raises(DatasetError, match="002.png") as info:
        check_data(config_for(data_copy))
    assert "data.skip_bad_images" in str(info.value)

    train, _ = check_data(config_for(data_copy, "data.skip_bad_images=true"))
    names = [s.image.name for s in train]
    assert "002.png" not in names and len(names) == 5


def test_bad_test_image_or_mask_always_stops(data_copy):
    mask = next((data_copy / SYNTH_CATEGORY / "ground_truth").rglob("*_mask.png"))
    break_file(mask, "truncated")
    with pytest.raises(DatasetError, match=mask.name):
        check_data(config_for(data_copy, "data.skip_bad_images=true"))


def test_sound_files_pass(synth_root):
    train, holdout = check_data(config_for(synth_root))
    assert len(train) == 6 and holdout == []
    assert all(unreadable(s.image) is None for s in train)


def test_non_finite_maps_stop_evaluation_naming_the_image():
    import numpy as np

    from cfa_anomaly.evaluate import EvaluationError, Predictions, compute_test_metrics

    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, 0, 0] = np.nan
    predictions = Predictions(paths=["a.png", "b.png"], scores=np.zeros(2), maps=maps, images_per_second=1.0,
                              labels=np.array([0, 1]), masks=np.zeros((2, 4, 4), bool))
    with pytest.raises(EvaluationError, match="b.png"):
        compute_test_metrics(predictions)
    predictions.maps[1, 0, 0] = 0.0
    assert compute_test_metrics(predictions)["pixel_auroc"] is None  # no defective pixel: undefined, not NaN


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with almost no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


def test_an_image_declaring_a_huge_size_is_a_clear_error_not_a_traceback(tmp_path):
    from cfa_anomaly.data.images import read_rgb

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(40000, 40000))
    assert "too large" in unreadable(bomb)
    with pytest.raises(DatasetError, match="bomb.png.*too large"):
        read_rgb(bomb)
