"""The Predictor, the plain graph, export to ONNX / OpenVINO / TorchScript and their parity (synthetic data)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfa_anomaly import cli
from cfa_anomaly.checkpoint import CheckpointError, read_checkpoint
from cfa_anomaly.data.dataset import AnomalyDataset
from cfa_anomaly.data.images import map_to_input_size, read_rgb, resize_center_crop
from cfa_anomaly.data.samples import make_samples
from cfa_anomaly.inference import Predictor
from cfa_anomaly.inference import export as export_module
from cfa_anomaly.inference.errors import ExportError
from cfa_anomaly.inference.export import export_checkpoint
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test

from conftest import has_module, requires_mobilenet_weights, small_config

pytestmark = requires_mobilenet_weights

RUNTIMES = [
    pytest.param("onnx", marks=pytest.mark.skipif(not (has_module("onnxruntime") and has_module("onnxscript")),
                                                  reason="onnxruntime/onnxscript not installed (extra [export])")),
    pytest.param("openvino", marks=pytest.mark.skipif(not (has_module("openvino") and has_module("onnxscript")),
                                                      reason="openvino/onnxscript not installed (extra [export])")),
    "torchscript",
]


def relative_max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A checkpoint trained with the default (auto) precision and a held-out threshold, and its test images."""
    cfg = small_config(synth_root, **{"data.holdout_fraction": "0.2"})
    output = tmp_path_factory.mktemp("trained")
    train_and_test(cfg, output)
    dataset = AnomalyDataset(make_samples(cfg.data.root, cfg.data.category, "test"), cfg.data.resize, cfg.data.crop)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    return cfg, output / runfiles.CHECKPOINT, images, [dataset[i]["path"] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def plain_reference(trained):
    """The torch plain float32 graph's maps and scores on the test images: the reference of every runtime."""
    _, checkpoint, images, _ = trained
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", graph="plain")
    return predictor.score_batch(images)


@pytest.fixture(scope="module", params=RUNTIMES)
def exported(request, trained, tmp_path_factory):
    _, checkpoint, _, _ = trained
    folder = tmp_path_factory.mktemp(f"export_{request.param}") / "model"
    export_checkpoint(checkpoint, request.param, folder)
    return request.param, folder


# --------------------------------------------------------------------------- the Predictor
def test_checkpoint_stores_the_resolved_precision(trained):
    cfg, checkpoint, _, _ = trained
    _, payload = read_checkpoint(checkpoint)
    assert cfg.model.precision == "auto"
    assert payload["precision"] in ("float32", "mixed")
    assert Predictor.from_checkpoint(checkpoint, device="cpu").card.precision == payload["precision"]


def test_predictor_takes_paths_pil_images_and_arrays_alike(trained):
    cfg, checkpoint, _, paths = trained
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    path = paths[-1]
    rgb = read_rgb(Path(path))
    result = predictor.predict([path, Image.open(path), rgb, Image.fromarray(rgb).convert("RGBA")])
    assert len(result) == 4 and result.sources[0] == path
    np.testing.assert_allclose(result.scores, result.scores[0], rtol=1e-6)
    assert result.maps.shape == (4, cfg.data.crop, cfg.data.crop)
    threshold = read_checkpoint(checkpoint)[1]["extra"]["threshold"]["image"]["value"]
    assert result.threshold == threshold is not None
    np.testing.assert_array_equal(result.decisions, result.scores >= threshold)


def test_predictor_maps_come_back_at_each_inputs_own_size(trained):
    _, checkpoint, _, paths = trained
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    rgb = read_rgb(Path(paths[0]))
    wide = np.asarray(Image.fromarray(rgb).resize((150, 90)))  # not square, not the crop size
    gray16 = (rgb[:, :, 0].astype(np.uint16) * 257)  # 16-bit grayscale
    result = predictor.predict([wide, gray16])
    assert [m.shape for m in result.input_maps] == [(90, 150), rgb.shape[:2]]
    for crop_map, input_map in zip(result.maps, result.input_maps):
        assert np.isfinite(input_map).all()
        assert input_map.max() == pytest.approx(crop_map.max(), rel=0.05)


def test_map_to_input_size_inverts_the_crop_geometry():
    resize, crop = 72, 64
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 1, 8, 8))).float(), size=(crop, crop),
                                             mode="bilinear", align_corners=False)[0, 0].numpy()
    # an input of the resize size: the crop region of the mapped-back map is the map itself
    square = map_to_input_size(smooth, (resize, resize), resize, crop)
    top = (resize - crop) // 2
    np.testing.assert_allclose(square[top: top + crop, top: top + crop], smooth, atol=1e-6)
    # any size: the forward geometry applied to the mapped-back map gives the map again (up to resampling)
    for size in ((90, 150), (200, 130)):
        back = map_to_input_size(smooth, size, resize, crop)
        again = resize_center_crop(torch.from_numpy(back)[None], resize, crop)[0].numpy()
        assert back.shape == size
        assert np.abs(again - smooth).max() < 0.05 * np.ptp(smooth)


def test_predictor_rejects_inputs_it_cannot_read(trained, tmp_path):
    _, checkpoint, _, _ = trained
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(TypeError, match="image 0"):
        predictor.predict([12345])
    with pytest.raises(Exception, match="shape"):
        predictor.predict(np.zeros((4, 4, 2), np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(Exception, match="broken.png"):
        predictor.predict(broken)


# --------------------------------------------------------------------------- the plain graph
@pytest.mark.parametrize("per_layer", ["true", "false"])
def test_plain_graph_equals_the_fast_path_in_float32(synth_root, per_layer):
    from cfa_anomaly.data.dataset import make_loader
    from cfa_anomaly.model.factory import build_model
    from cfa_anomaly.model.plain import PlainCFA
    from cfa_anomaly.train import fit

    cfg = small_config(synth_root, **{"model.precision": "float32", "model.per_layer_projection": per_layer})
    model = build_model(cfg, torch.device("cpu"))
    train = AnomalyDataset(make_samples(synth_root, cfg.data.category, "train"), cfg.data.resize, cfg.data.crop)
    fit(model, make_loader(train, cfg.data.batch_size), cfg, torch.device("cpu"))
    test = AnomalyDataset(make_samples(synth_root, cfg.data.category, "test"), cfg.data.resize, cfg.data.crop)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    fast_maps, fast_scores = model(images)
    with torch.no_grad():
        plain_maps, plain_scores = PlainCFA(model, cfg.data.crop).eval()(images)
    assert relative_max_difference(plain_maps.numpy(), fast_maps.numpy()) < 1e-5
    np.testing.assert_allclose(plain_scores.numpy(), fast_scores.numpy(), rtol=1e-5)


def test_plain_graph_has_no_custom_function_or_sparse_op(trained):
    """What the exporters see: standard aten ops only."""
    from cfa_anomaly.checkpoint import restore_model
    from cfa_anomaly.model.plain import PlainCFA

    _, checkpoint, images, _ = trained
    model, cfg, _ = restore_model(checkpoint, "cpu", precision="float32")
    program = torch.export.export(PlainCFA(model, cfg.data.crop).eval(), (images[:2],))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("topk" in t for t in targets) and any("matmul" in t or "mm" in t for t in targets)
    assert not [t for t in targets if "sparse" in t or "embedding_bag" in t or "autograd" in t.lower()]


# --------------------------------------------------------------------------- exported models
def test_exported_model_equals_the_torch_float32_graph(exported, trained, plain_reference):
    runtime, folder = exported
    _, checkpoint, images, _ = trained
    reference_maps, reference_scores = plain_reference
    predictor = Predictor.from_export(folder)
    for batch in (images[:1], images):  # the batch size is dynamic
        maps, scores = predictor.score_batch(batch)
        count = len(batch)
        assert maps.shape == (count, *reference_maps.shape[1:]) and scores.shape == (count,)
        assert relative_max_difference(maps, reference_maps[:count]) < 1e-3, runtime
        np.testing.assert_allclose(scores, reference_scores[:count], rtol=1e-4)
    torch_predictor = Predictor.from_checkpoint(checkpoint, device="cpu", graph="plain")
    assert predictor.threshold == torch_predictor.threshold is not None
    np.testing.assert_array_equal(predictor.decide(scores), torch_predictor.decide(reference_scores))


def test_export_metadata_says_what_a_runtime_needs(exported, trained):
    runtime, folder = exported
    cfg, checkpoint, _, _ = trained
    metadata = json.loads((folder / "model.json").read_text())
    assert metadata["runtime"] == runtime
    card = metadata["card"]
    assert (card["resize"], card["crop"], card["backbone"]) == (cfg.data.resize, cfg.data.crop, cfg.model.backbone)
    assert card["thresholds"] == read_checkpoint(checkpoint)[1]["extra"]["threshold"]
    assert "geometry" in card
    assert card["precision"] in ("float32", "mixed") and card["package_version"]
    assert metadata["input"]["shape"] == ["N", 3, cfg.data.crop, cfg.data.crop]
    assert set(metadata["files"]) == {p.name for p in folder.iterdir()} - {"model.json"}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_exported_model_runs_without_the_training_code(exported, trained):
    """An inspection station needs the runtime and the model folder, not the fused training step."""
    _, folder = exported
    _, _, _, paths = trained
    script = (
        "import sys\n"
        "from cfa_anomaly.inference import Predictor\n"
        f"result = Predictor.from_export({str(folder)!r}).predict([{paths[0]!r}])\n"
        "loaded = [m for m in ('cfa_anomaly.train', 'cfa_anomaly.model.matching', 'cfa_anomaly.model.cfa',"
        " 'cfa_anomaly.pipeline') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print(float(result.scores[0]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) > 0


def copied(folder: Path, target: Path) -> Path:
    """A copy of an exported model's folder, to damage."""
    target.mkdir()
    for item in folder.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def test_tampered_or_incomplete_exports_are_refused_by_name(exported, tmp_path):
    _, folder = exported
    copy = copied(folder, tmp_path / "copy")
    model_file = next(copy / name for name in json.loads((copy / "model.json").read_text())["files"])
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(ExportError, match=f"{model_file.name}.*SHA-256"):
        Predictor.from_export(copy)
    (copy / "model.json").unlink()
    with pytest.raises(ExportError, match="model.json is missing"):
        Predictor.from_export(copy)
    with pytest.raises(ExportError, match="not found"):
        Predictor.from_export(tmp_path / "absent")


def test_export_metadata_without_a_card_key_is_refused(exported, tmp_path):
    _, folder = exported
    copy = copied(folder, tmp_path / "copy")
    metadata = json.loads((copy / "model.json").read_text())
    del metadata["card"]["backbone"]
    (copy / "model.json").write_text(json.dumps(metadata))
    with pytest.raises(ExportError, match="backbone"):
        Predictor.from_export(copy)


# --------------------------------------------------------------------------- bad export requests
def test_export_refuses_a_non_empty_folder_and_unknown_formats(trained, tmp_path):
    _, checkpoint, _, _ = trained
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_checkpoint(checkpoint, "torchscript", occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="unknown export format"):
        export_checkpoint(checkpoint, "tflite", tmp_path / "out")
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                     "--output", str(occupied)]) == 2


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt"):
        export_checkpoint(foreign, "torchscript", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    _, checkpoint, _, _ = trained

    def fail(graph, example, path):
        path.write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setitem(export_module.WRITERS, "torchscript", fail)
    with pytest.raises(ExportError, match="disk full"):
        export_checkpoint(checkpoint, "torchscript", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- the command line
def read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


@pytest.mark.skipif(not (has_module("onnxruntime") and has_module("onnxscript")),
                    reason="onnxruntime/onnxscript not installed (extra [export])")
def test_cli_export_then_predict_gives_the_checkpoints_outputs(trained, tmp_path):
    cfg, checkpoint, _, _ = trained
    folder = tmp_path / "exported"
    inputs = str(Path(cfg.data.root) / cfg.data.category / "test")
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(folder)]) == 0
    assert cli.main(["predict", "--model", str(folder), "--output", str(tmp_path / "runtime"),
                     inputs + "/good", inputs + "/hole"]) == 0
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--graph", "plain", "--device", "cpu",
                     "--output", str(tmp_path / "torch"), inputs + "/good", inputs + "/hole"]) == 0
    runtime, reference = read_scores(tmp_path / "runtime" / "scores.csv"), read_scores(tmp_path / "torch" / "scores.csv")
    assert runtime.keys() == reference.keys() and len(runtime) >= 2
    for key, value in reference.items():
        assert runtime[key] == pytest.approx(value, rel=1e-4)
    for name in ("scores.csv", "maps.npz"):
        assert (tmp_path / "runtime" / name).is_file()
    assert sorted(p.relative_to(tmp_path / "runtime").as_posix() for p in (tmp_path / "runtime" / "panels").rglob("*.png")) \
        == sorted(p.relative_to(tmp_path / "torch").as_posix() for p in (tmp_path / "torch" / "panels").rglob("*.png"))
    # a bfloat16 request for an ONNX model is refused with what to do, by either name
    for name in ("bfloat16", "bf16"):
        assert cli.main(["predict", "--model", str(folder), "--inference-precision", name,
                         "--output", str(tmp_path / name), inputs + "/good"]) == 2


def test_inference_precision_names_are_those_of_model_precision_and_openvinos():
    from cfa_anomaly.inference.errors import ExportError
    from cfa_anomaly.inference.runtimes import inference_precision_name

    assert [inference_precision_name(n) for n in ("float32", "f32", "bfloat16", "bf16")] == [
        "float32", "float32", "bfloat16", "bfloat16"]
    with pytest.raises(ExportError, match="float32 or bfloat16"):
        inference_precision_name("int8")


@pytest.mark.skipif(not (has_module("openvino") and has_module("onnxscript")),
                    reason="openvino/onnxscript not installed (extra [export])")
def test_cli_test_of_an_exported_model_gives_the_checkpoints_metrics(trained, tmp_path):
    _, checkpoint, _, _ = trained
    folder = tmp_path / "exported"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(folder)]) == 0
    assert cli.main(["test", "--model", str(folder), "--output", str(tmp_path / "runtime")]) == 0
    assert cli.main(["test", "--checkpoint", str(checkpoint), "--graph", "plain", "--device", "cpu",
                     "--output", str(tmp_path / "torch")]) == 0
    runtime = json.loads((tmp_path / "runtime" / "metrics.json").read_text())
    reference = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    for key, value in reference["metrics"].items():
        assert runtime["metrics"][key] == pytest.approx(value, abs=5e-5), key
    assert runtime["at_threshold"] == reference["at_threshold"]
    assert runtime["environment"]["engine"].startswith("openvino")
    assert cli.main(["test", "--model", str(folder)]) == 2  # no --output: never written into the model folder


def test_overwriting_an_export_replaces_the_previous_formats_files(trained, tmp_path, monkeypatch):
    _, checkpoint, _, _ = trained
    folder = tmp_path / "exported"
    export_checkpoint(checkpoint, "torchscript", folder)
    (folder / "notes.txt").write_text("the user's own file")
    with pytest.raises(ExportError, match="not empty"):
        export_checkpoint(checkpoint, "onnx", folder)
    monkeypatch.setitem(export_module.WRITERS, "onnx", lambda graph, example, path: path.write_bytes(b"onnx"))
    export_checkpoint(checkpoint, "onnx", folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "notes.txt"]
    assert json.loads((folder / "model.json").read_text())["runtime"] == "onnx"


def test_cli_threshold_overrides_the_stored_one_and_version_prints(trained, tmp_path, capsys):
    cfg, checkpoint, _, _ = trained
    inputs = str(Path(cfg.data.root) / cfg.data.category / "test")
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--threshold", "-1",
                     "--output", str(tmp_path / "low"), inputs + "/good"]) == 0
    with open(tmp_path / "low" / "scores.csv", newline="") as handle:
        assert {row["decision"] for row in csv.DictReader(handle)} == {"defective"}
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--threshold", "nan",
                     "--output", str(tmp_path / "nan"), inputs + "/good"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and "cfa 0." in capsys.readouterr().out


def test_every_convolution_of_the_plain_graph_runs_inside_the_float32_guard(trained, monkeypatch):
    """On CUDA a convolution outside runtime.true_float32_convolutions runs in TF32; here (CPU) the guard is
    replaced by one that records, and every conv2d call of the plain graph (backbone, descriptor, blur) must
    happen inside it."""
    import contextlib

    import torch.nn.functional as F

    from cfa_anomaly.checkpoint import restore_model
    from cfa_anomaly.model import plain, scorer
    from cfa_anomaly.model.plain import PlainCFA

    depth, inside = [0], []

    @contextlib.contextmanager
    def recording_guard(device):
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    real_conv2d = F.conv2d

    def conv2d(*args, **kwargs):
        inside.append(depth[0] > 0)
        return real_conv2d(*args, **kwargs)

    _, checkpoint, images, _ = trained
    model, cfg, _ = restore_model(checkpoint, "cpu", precision="float32")
    graph = PlainCFA(model, cfg.data.crop).eval()
    monkeypatch.setattr(plain, "true_float32_convolutions", recording_guard)
    monkeypatch.setattr(scorer, "true_float32_convolutions", recording_guard, raising=False)
    monkeypatch.setattr(F, "conv2d", conv2d)
    with torch.no_grad():
        graph(images[:2])
    assert len(inside) >= 3 and all(inside)  # descriptor 1x1 convolutions and the two blur passes at least
