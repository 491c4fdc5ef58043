"""Tiled scoring of high-resolution images: the tile grid, blending, config checks, and a tiled model
through train, test, predict and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config

from cfa_anomaly import cli
from cfa_anomaly.config import ConfigError
from cfa_anomaly.data.images import image_to_tensor, read_rgb
from cfa_anomaly.inference import Predictor
from cfa_anomaly.inference.export import export_checkpoint
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.tiling import TileGrid


@pytest.mark.parametrize(("size", "tile", "overlap"), [(96, 64, 0.5), (100, 32, 0.25), (64, 64, 0.25), (70, 32, 0.0)])
def test_tiles_cover_the_image_and_blending_returns_a_consistent_field(size, tile, overlap):
    grid = TileGrid(size, tile, overlap)
    starts = grid.starts()
    assert starts[0] == 0 and starts[-1] + tile == size and all(b - a <= grid.stride for a, b in zip(starts, starts[1:]))
    images = torch.rand(2, 3, size, size)
    tiles = grid.cut(images)
    assert tiles.shape == (2 * grid.count, 3, tile, tile)
    torch.testing.assert_close(tiles[grid.count], images[1, :, :tile, :tile])  # image 1's first tile
    if len(starts) > 1:  # then the next one to its right
        torch.testing.assert_close(tiles[grid.count + 1], images[1, :, :tile, starts[1]: starts[1] + tile])
    assert (grid.window() > 0).all()
    # each tile's "map" is the field under it: the blend gives the field back exactly
    field = np.random.default_rng(0).random((2, size, size)).astype(np.float32)
    field_tiles = grid.cut(torch.from_numpy(field)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(grid.stitch(field_tiles), field, rtol=1e-5, atol=1e-6)


def test_tiling_settings_are_checked_by_name():
    for overrides, key in ((["data.tile=64", "data.resize=96", "data.crop=80"], "data.crop"),
                           (["data.tile=128", "data.resize=96", "data.crop=96"], "data.tile"),
                           (["data.tile=64", "data.resize=96", "data.crop=96", "data.tile_overlap=0.9"],
                            "data.tile_overlap"),
                           (["data.tile=64", "data.resize=96", "data.crop=96", "data.validation=synthetic"],
                            "data.validation")):
        with pytest.raises(ConfigError, match=key):
            small_config("unused", **dict(item.split("=") for item in overrides))


@pytest.fixture(scope="module")
def tiled(synth_root, tmp_path_factory):
    cfg = small_config(synth_root, **{"data.resize": "96", "data.crop": "96", "data.tile": "64",
                                      "data.tile_overlap": "0.5", "data.holdout_fraction": "0.5"})
    output = tmp_path_factory.mktemp("tiled")
    report = train_and_test(cfg, output)
    return cfg, output, report


@requires_mobilenet_weights
def test_a_tiled_model_trains_on_tiles_and_scores_whole_images(tiled, synth_root):
    cfg, output, report = tiled
    assert report["train"]["images"] == 3 * 4  # 3 training images, 2 x 2 tiles each
    assert "tiles of 64 px" in report["geometry"]
    with np.load(output / "maps.npz") as saved:
        maps, scores = saved["maps"].astype(np.float32), saved["scores"]
    assert maps.shape[1:] == (96, 96)
    np.testing.assert_allclose(maps.reshape(len(maps), -1).max(1), scores, rtol=2e-3)
    predictor = Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu")
    image = sorted((synth_root / SYNTH_CATEGORY / "test" / "hole").iterdir())[0]
    tensor = image_to_tensor(read_rgb(image), 96, 96)[None]
    grid = predictor.card.grid
    tile_maps = predictor.backend(grid.cut(tensor))[0]
    np.testing.assert_allclose(predictor.score_batch(tensor)[0][0], grid.stitch(tile_maps)[0], rtol=1e-6)
    assert report["threshold"]["pixel"]["candidates"]["synthetic-peak"]


@requires_mobilenet_weights
def test_a_tiled_model_predicts_and_exports_the_same_maps(tiled, synth_root, tmp_path):
    _, output, _ = tiled
    checkpoint = output / runfiles.CHECKPOINT
    images = sorted((synth_root / SYNTH_CATEGORY / "test" / "scratch").iterdir())
    reference = Predictor.from_checkpoint(checkpoint, device="cpu", graph="plain").predict(images)
    export_checkpoint(checkpoint, "torchscript", tmp_path / "model")
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    assert metadata["input"]["shape"] == ["N", 3, 64, 64] and metadata["card"]["tile"] == 64
    exported = Predictor.from_export(tmp_path / "model").predict(images)
    np.testing.assert_allclose(exported.maps, reference.maps, rtol=1e-4, atol=1e-5)
    assert exported.input_maps[0].shape == read_rgb(images[0]).shape[:2]
    assert cli.main(["predict", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "out"),
                     "--panels", "none", *map(str, images)]) == 0
    with np.load(tmp_path / "out" / "maps.npz") as saved:
        np.testing.assert_allclose(saved["scores"], exported.scores, rtol=1e-5)


@requires_mobilenet_weights
def test_the_service_scores_a_tiled_model_as_the_predictor_does(tiled, synth_root):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cfa_anomaly.serve import ModelInfo, ServeSettings, create_app

    _, output, _ = tiled
    predictor = Predictor.from_checkpoint(output / runfiles.CHECKPOINT, device="cpu")
    image = sorted((synth_root / SYNTH_CATEGORY / "test" / "stain").iterdir())[0]
    expected = predictor.predict([image])
    app = create_app(predictor, ServeSettings(), ModelInfo("tiled", "checkpoint", str(output), "0" * 64))
    with TestClient(app) as client:
        answer = client.post("/predict?overlay=true", content=image.read_bytes()).json()
        card = client.get("/model").json()
    assert answer["score"] == pytest.approx(float(expected.scores[0]), rel=1e-5)
    assert answer["decision"] == expected.thresholds.label(float(expected.scores[0]))
    assert (answer["overlay"]["width"], answer["overlay"]["height"]) == (96, 96)
    assert card["tile"] == 64 and "tiles of 64 px" in card["geometry"]
