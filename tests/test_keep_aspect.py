"""data.keep_aspect: non-square images keep their shape (short side resized, centre crop), masks get the
same geometry, and maps go back onto each input's own pixels the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, requires_mobilenet_weights, small_config
from PIL import Image

from cfa_anomaly.data.images import (
    image_to_tensor,
    map_to_input_size,
    mask_to_tensor,
    read_rgb,
    resize_center_crop,
    resized_shape,
)
from cfa_anomaly.data.samples import list_images
from cfa_anomaly.inference import Predictor
from cfa_anomaly.inference.export import export_checkpoint
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test

HAZELNUT = SHARED_DATA / "hazelnut_toy" / "hazelnut" / "train" / "good"


def disk(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2


def non_square_images() -> list[np.ndarray]:
    """A noise image, and a real hazelnut photo cut to 512 x 384 when ../shared/data is there."""
    images = [np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8)]
    if HAZELNUT.is_dir():
        images.append(read_rgb(list_images(HAZELNUT)[0])[:, 64:448])
    return images


def test_short_side_is_resized_and_the_long_side_follows():
    assert resized_shape(512, 522, 256, keep_aspect=True) == (256, 261)
    assert resized_shape(300, 420, 256, keep_aspect=True) == (256, 358)
    assert resized_shape(300, 420, 256, keep_aspect=False) == (256, 256)


@pytest.mark.parametrize("image", non_square_images(), ids=lambda a: f"{a.shape[0]}x{a.shape[1]}")
def test_mask_stays_on_its_pixels_and_round_things_stay_round(image):
    height, width = image.shape[:2]
    mask = disk(height, width, height / 2 + 20, width / 2 - 30, 40)
    painted = image.copy()
    painted[mask] = (255, 0, 0)
    kept_image = image_to_tensor(painted, 256, 224, keep_aspect=True)
    kept_mask = mask_to_tensor(mask, 256, 224, keep_aspect=True).numpy()
    inside = kept_image[:, kept_mask].mean(dim=1)
    assert inside[0] > 0.95 and inside[1] < 0.05 and inside[2] < 0.05  # the mask covers the red disk
    rows, cols = np.nonzero(kept_mask)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # still a disk
    squashed = mask_to_tensor(mask, 256, 224, keep_aspect=False).numpy()
    rows, cols = np.nonzero(squashed)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) > 5  # squashing makes it an ellipse


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_maps_go_back_onto_the_inputs_own_pixels(keep_aspect):
    height, width = 300, 420
    y, x = np.mgrid[:height, :width].astype(np.float32)
    field = np.sin(y / 37.0) + np.cos(x / 53.0)  # smooth, so resampling twice changes it little
    crop_map = resize_center_crop(torch.from_numpy(field)[None], 256, 224, keep_aspect=keep_aspect)[0].numpy()
    back = map_to_input_size(crop_map, (height, width), 256, 224, keep_aspect=keep_aspect)
    assert back.shape == (height, width)
    rh, rw = resized_shape(height, width, 256, keep_aspect)
    top = int(np.ceil((rh - 224) / 2 * height / rh)) + 2
    left = int(np.ceil((rw - 224) / 2 * width / rw)) + 2
    seen = (slice(top, height - top), slice(left, width - left))  # the part of the input the crop kept
    assert np.abs(back[seen] - field[seen]).max() < 0.05


@requires_mobilenet_weights
def test_a_keep_aspect_model_predicts_and_exports_with_its_geometry(synth_root, tmp_path):
    cfg = small_config(synth_root, **{"data.keep_aspect": "true", "data.holdout_fraction": "0.2"})
    train_and_test(cfg, tmp_path / "run", run_test=False)
    predictor = Predictor.from_checkpoint(tmp_path / "run" / runfiles.CHECKPOINT, device="cpu")
    assert predictor.card.keep_aspect
    image = np.random.default_rng(1).integers(0, 255, (90, 140, 3), dtype=np.uint8)
    result = predictor.predict(image)
    assert result.maps.shape == (1, cfg.data.crop, cfg.data.crop) and result.input_maps[0].shape == (90, 140)
    np.testing.assert_allclose(predictor.preprocess(image), image_to_tensor(image, 72, 64, keep_aspect=True))
    export_checkpoint(tmp_path / "run" / runfiles.CHECKPOINT, "torchscript", tmp_path / "model")
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    assert "keeping the aspect ratio" in metadata["input"]["preprocessing"]
    exported = Predictor.from_export(tmp_path / "model")
    assert exported.card.keep_aspect
    # the export is the checkpoint's plain float32 graph: compared with that graph (the fast one may run
    # `mixed`, whose nearest-centre search is approximate)
    plain = Predictor.from_checkpoint(tmp_path / "run" / runfiles.CHECKPOINT, device="cpu", graph="plain")
    np.testing.assert_allclose(exported.predict(image).scores, plain.predict(image).scores, rtol=1e-4)
    from cfa_anomaly.distributed.predict import decode_batch  # Ray predict's decoding tasks (no Ray needed)

    path = tmp_path / "wide.png"
    Image.fromarray(image).save(path)
    decoded = decode_batch({"path": np.asarray([str(path)]), "file": np.asarray([str(path)])}, predictor.card)
    np.testing.assert_array_equal(decoded["image"][0], predictor.preprocess(image).numpy())
