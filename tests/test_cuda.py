"""The GPU path against the CPU path: the same neighbours, gradients and maps. Skipped without CUDA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cfa_anomaly.inference import Predictor
from cfa_anomaly.model.distances import centre_bank
from cfa_anomaly.model.matching import describe_and_match
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_report import evaluate_predictor
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config
from test_fast_path import CPU, assert_paths_agree, run_precision
from test_matching import layer_and_inputs, plain_reference, pyramid_and_bank

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here; checked where there is one")
GPU = torch.device("cuda")


def fused_step(layer, maps, centres, k: int, weights, low_precision: bool):
    """Distances, indices and parameter gradients of the fused step, all returned on the CPU."""
    bank = centre_bank(centres, torch.bfloat16 if low_precision else torch.float32)
    values, indices = describe_and_match(layer, maps, bank, k)
    (values.double() * weights).sum().backward()
    grads = [param.grad.detach().cpu().clone() for param in layer.parameters()]
    layer.zero_grad()
    return values.detach().cpu(), indices.cpu(), grads


def to_gpu(maps):
    return maps.to(GPU) if isinstance(maps, torch.Tensor) else [grid.to(GPU) for grid in maps]


@pytest.mark.parametrize("inputs", ["aggregated-0", "aggregated-1", "per-layer-0"])
def test_fused_step_on_the_gpu_equals_the_cpu_in_float32(inputs):
    """One aggregated map (two seeds) or per-layer maps at several resolutions."""
    kind, seed = inputs.rsplit("-", 1)
    k = 5
    layer, maps, centres = (layer_and_inputs if kind == "aggregated" else pyramid_and_bank)(int(seed))
    first = maps if isinstance(maps, torch.Tensor) else maps[0]
    weights = torch.randn(first.shape[0] * first.shape[2] * first.shape[3], k, dtype=torch.float64)
    cpu_values, cpu_indices, cpu_grads = fused_step(layer, maps, centres, k, weights, False)
    layer.to(GPU)
    gpu_values, gpu_indices, gpu_grads = fused_step(layer, to_gpu(maps), centres.to(GPU), k, weights.to(GPU),
                                                    False)
    assert torch.equal(gpu_indices, cpu_indices)
    torch.testing.assert_close(gpu_values, cpu_values, rtol=1e-4, atol=1e-4)
    for gpu_grad, cpu_grad in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-3, atol=1e-3)


def test_fused_step_on_the_gpu_in_bfloat16_returns_exact_distances_of_nearly_the_same_neighbours():
    k = 5
    layer, maps, centres = layer_and_inputs(3)
    ref_values, ref_indices = plain_reference(layer, maps, centres, k)
    values, indices = describe_and_match(layer.to(GPU), maps.to(GPU), centre_bank(centres.to(GPU), torch.bfloat16), k)
    values, indices = values.cpu(), indices.cpu()
    assert values.dtype == torch.float32
    assert torch.all(values[:, 1:] >= values[:, :-1])
    assert (indices[:, 0] == ref_indices[:, 0]).float().mean() >= 0.95
    torch.testing.assert_close(values.double(), ref_values.detach(), rtol=0.05, atol=0.05)


@requires_mobilenet_weights
@pytest.mark.parametrize("precision", ["float32", "mixed"])
def test_training_and_scoring_on_the_gpu_agree_with_the_cpu(synth_root, precision):
    cpu = run_precision(synth_root, SYNTH_CATEGORY, precision, 72, 64, 2, CPU)
    gpu = run_precision(synth_root, SYNTH_CATEGORY, precision, 72, 64, 2, GPU)
    assert_paths_agree(cpu, gpu)
    if precision == "float32":  # the same arithmetic up to summation order (no TF32 in the float32 path)
        correlation = np.corrcoef(cpu.maps.ravel(), gpu.maps.ravel())[0, 1]
        assert correlation > 0.9999, correlation


@requires_mobilenet_weights
def test_a_checkpoint_trained_on_the_gpu_scores_the_same_on_the_cpu(synth_root, tmp_path):
    cfg = small_config(synth_root, **{"train.device": "cuda", "model.precision": "float32"})
    trained = train_and_test(cfg, tmp_path / "gpu")
    checkpoint = tmp_path / "gpu" / "checkpoint.pt"
    tested = evaluate_predictor(Predictor.from_checkpoint(checkpoint, device="cpu"), tmp_path / "cpu")
    gpu_maps = np.load(tmp_path / "gpu" / "maps.npz")["maps"].astype(np.float64)
    cpu_maps = np.load(tmp_path / "cpu" / "maps.npz")["maps"].astype(np.float64)
    correlation = np.corrcoef(gpu_maps.ravel(), cpu_maps.ravel())[0, 1]
    assert correlation > 0.9999, correlation
    for key, value in trained["metrics"].items():
        if value is not None:
            got = tested["metrics"][key]
            assert abs(got - value) < 0.01, json.dumps([key, value, got])


@requires_mobilenet_weights
def test_the_plain_graph_on_the_gpu_equals_the_cpu(synth_root, tmp_path):
    """The exported graph's torch form (model/plain.py) on a GPU: float32 convolutions and products."""
    from cfa_anomaly.data.dataset import AnomalyDataset
    from cfa_anomaly.data.samples import make_samples

    cfg = small_config(synth_root, **{"train.device": "cpu", "model.precision": "float32"})
    train_and_test(cfg, tmp_path / "run", run_test=False)
    test = AnomalyDataset(make_samples(synth_root, SYNTH_CATEGORY, "test"), cfg.data.resize, cfg.data.crop)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    cpu_maps, cpu_scores = Predictor.from_checkpoint(checkpoint, device="cpu", graph="plain").score_batch(images)
    gpu_maps, gpu_scores = Predictor.from_checkpoint(checkpoint, device="cuda", graph="plain").score_batch(images)
    assert np.abs(gpu_maps - cpu_maps).max() / np.abs(cpu_maps).max() < 1e-4
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4)
