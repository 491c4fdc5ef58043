"""Exported runtimes against the torch float32 graph on real images (../shared/data; skipped without it).

The default config of each category with an offline backbone, 10 epochs (a third of the paper's 30: the
exports' equality does not depend on how long the model trained; it keeps the suite short), trained
once per (data, backbone). For ONNX Runtime and OpenVINO in float32: maps within 1e-3 relative max abs
difference of the torch plain float32 graph, image scores within 1e-4 relative, identical decisions at
the stored threshold, every metric equal to 4 decimals. The fast torch path (the trained precision, what
auto picks on this machine) against the plain graph: by metric, score and map, at that precision's
tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from cfa_anomaly.config import load_config
from cfa_anomaly.evaluate import Predictions, compute_test_metrics, predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.inference.export import export_checkpoint
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import split_loader

from conftest import HAS_EFFICIENTNET_LITE0, REPO_ROOT, has_module, requires_mobilenet_weights
from test_fast_path import SCORING

pytestmark = [
    requires_mobilenet_weights,
    pytest.mark.skipif(not (has_module("onnxruntime") and has_module("openvino") and has_module("onnxscript")),
                       reason="onnxruntime, openvino and onnxscript are needed (extra [export])"),
]

SETS = {"grid": "mvtec_ad", "hazelnut": "hazelnut_toy"}
LITE0 = pytest.mark.skipif(not HAS_EFFICIENTNET_LITE0,
                           reason="efficientnet-lite0 weights not installed (extra [offline-weights])")
CASES = [pytest.param((category, backbone), id=f"{category}-{backbone}",
                      marks=[LITE0] if backbone == "efficientnet_lite0" else [])
         for category in SETS for backbone in ("mobilenet_v2", "efficientnet_lite0")]


def relative_max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=CASES)
def scored(request, shared_data, tmp_path_factory):
    """Train the default config for 10 epochs, export to ONNX and OpenVINO, score the test split with the
    torch plain graph, the fast torch path and both runtimes."""
    category, backbone = request.param
    cfg = load_config(REPO_ROOT / "configs/anomaly/unsupervised/cfa" / f"{category}.yaml",
                      [f"data.root={shared_data / SETS[category]}", f"model.backbone={backbone}",
                       "train.epochs=10", "train.device=cpu", "evaluation.cross_fit_below=0"])
    folder = tmp_path_factory.mktemp(f"{category}_{backbone}")
    train_and_test(cfg, folder / "run", run_test=False)  # the scoring below is the test
    checkpoint = folder / "run" / runfiles.CHECKPOINT
    predictors = {"plain": Predictor.from_checkpoint(checkpoint, device="cpu", graph="plain"),
                  "fast": Predictor.from_checkpoint(checkpoint, device="cpu")}
    for fmt in ("onnx", "openvino"):
        export_checkpoint(checkpoint, fmt, folder / fmt)
        predictors[fmt] = Predictor.from_export(folder / fmt)
    results: dict[str, tuple[Predictions, dict]] = {}
    for name, predictor in predictors.items():
        predictions = predict(predictor, split_loader(cfg, "test"), desc=name)
        results[name] = (predictions, compute_test_metrics(predictions))
    return predictors, results


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_runtime_equals_the_torch_float32_graph_on_real_images(scored, runtime):
    predictors, results = scored
    (reference, reference_metrics), (predictions, metrics) = results["plain"], results[runtime]
    assert predictions.paths == reference.paths
    assert relative_max_difference(predictions.maps, reference.maps) < 1e-3
    np.testing.assert_allclose(predictions.scores, reference.scores, rtol=1e-4)
    threshold = predictors[runtime].threshold
    assert threshold is not None and threshold == predictors["plain"].threshold
    np.testing.assert_array_equal(predictions.scores >= threshold, reference.scores >= threshold)
    for key, value in reference_metrics.items():
        assert abs(metrics[key] - value) < 5e-5, (key, metrics[key], value)


def test_fast_torch_path_agrees_with_the_plain_graph_on_real_images(scored):
    """The default path (the precision auto picked here) by metric, score and map, at that precision's
    tolerance (test_fast_path.SCORING, as docs/performance.md states it)."""
    predictors, results = scored
    (reference, reference_metrics), (predictions, metrics) = results["plain"], results["fast"]
    tolerance = SCORING[predictors["fast"].card.precision]
    for key, value in reference_metrics.items():
        assert tolerance.allows(key, abs(metrics[key] - value)), (key, metrics[key], value)
    correlation = np.corrcoef(predictions.maps.ravel(), reference.maps.ravel())[0, 1]
    assert correlation >= tolerance.correlation, correlation
    relative = np.abs(predictions.scores - reference.scores).max() / np.abs(reference.scores).max()
    assert relative <= tolerance.scores, relative
