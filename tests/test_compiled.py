"""model.compile: the torch.compile'd descriptor front equals the eager one; settings and fallback."""

from __future__ import annotations

import logging

import pytest
import torch

from cfa_anomaly.config import ConfigError, load_config
from cfa_anomaly.model import CFA, compiled
from cfa_anomaly.model import cfa as cfa_module
from cfa_anomaly.model.compiled import AUTO_MIN_ELEMENTS, Compiled, CompileError, compile_enabled
from cfa_anomaly.model.descriptor import CoordConv1x1
from cfa_anomaly.model.distances import centre_bank
from cfa_anomaly.model.matching import COMPILED_BACK, COMPILED_FRONT, describe_and_match

CPU = torch.device("cpu")


def tiny_layers(batch: int = 2) -> list[torch.Tensor]:
    """Per-layer maps at 16x16, 8x8 and 4x4 (8 channels each), channels-last, in bfloat16."""
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(batch, 8, size, size, generator=generator).bfloat16()
            .contiguous(memory_format=torch.channels_last) for size in (16, 8, 4)]


def test_off_never_compiles_and_auto_skips_small_steps():
    assert not compile_enabled("off", CPU)
    assert not compile_enabled("auto", CPU, AUTO_MIN_ELEMENTS - 1)


def test_on_without_a_compiler_is_an_error_and_auto_runs_eagerly(monkeypatch):
    monkeypatch.setattr(compiled, "compiler_missing", lambda device_type: "no C++ compiler (test)")
    with pytest.raises(CompileError, match="no C.. compiler"):
        compile_enabled("on", CPU)
    assert not compile_enabled("auto", CPU, AUTO_MIN_ELEMENTS)


def test_a_failed_compile_falls_back_to_eager_with_a_warning(caplog):
    wrapper = Compiled(lambda x: x * 2, "double")

    def broken(*args: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("compiler exploded")

    wrapper.compiled = broken
    with caplog.at_level(logging.WARNING, logger="cfa_anomaly.model.compiled"):
        assert torch.equal(wrapper(torch.ones(3)), torch.full((3,), 2.0))
    assert "compiler exploded" in caplog.text and wrapper.compiled is None
    assert torch.equal(wrapper(torch.ones(2)), torch.full((2,), 2.0))  # eager from then on


@pytest.mark.parametrize("setting, expected",
                         [("off", "off"), ("on", "on"), ("false", "off"), ("True", "on")])
def test_compile_setting_accepts_yaml_booleans(setting, expected):
    assert load_config(None, [f"model.compile={setting}"]).model.compile == expected


def test_unknown_compile_setting_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(None, ["model.compile=sometimes"])


@pytest.mark.skipif(compiled.compiler_missing("cpu") is not None, reason="no C++ compiler for torch.compile")
def test_compiled_front_equals_eager_in_distances_indices_and_gradients():
    torch.manual_seed(0)
    layer = CoordConv1x1(24, 24)
    layers = tiny_layers()
    bank = centre_bank(torch.randn(64, 24), torch.bfloat16)
    results = []
    for use_compiled in (False, True):
        layer.zero_grad()
        distances, indices = describe_and_match(layer, layers, bank, 3, compiled=use_compiled)
        distances.sum().backward()
        gradients = layer.conv.weight.grad.clone(), layer.conv.bias.grad.clone()
        results.append((distances.detach(), indices, *gradients))
    (eager_d, eager_i, eager_w, eager_b), (fast_d, fast_i, fast_w, fast_b) = results
    assert COMPILED_FRONT.failure is None and COMPILED_BACK.failure is None  # compiled, not fallen back
    assert torch.equal(eager_i, fast_i)
    torch.testing.assert_close(fast_d, eager_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_w, eager_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_b, eager_b, rtol=1e-4, atol=1e-4)


def auto_model(monkeypatch, compiler: bool) -> CFA:
    """A tiny CFA with model.compile=auto, its size threshold lowered so that auto applies; the fused step
    replaced by a recorder of its `compiled` argument, so nothing is compiled."""
    from test_fused_step import TinyBackbone, tiny_config

    monkeypatch.setattr(compiled, "AUTO_MIN_ELEMENTS", 0)
    if not compiler:
        monkeypatch.setattr(compiled, "compiler_missing", lambda device_type: "no C++ compiler (test)")
    model = CFA(TinyBackbone(), tiny_config(**{"model.compile": "auto"}).model, precision="mixed")
    model.calls = []

    def record(layer: CoordConv1x1, layers: list, bank: None, k: int, compiled: bool,
               shift: torch.Tensor | None = None) -> tuple:
        model.calls.append(compiled)
        return layer.conv.weight.sum().reshape(1, 1), None

    monkeypatch.setattr(cfa_module, "describe_and_match", record)
    monkeypatch.setattr(model, "prepared_bank", lambda: None)
    return model


def test_auto_compiles_only_the_warmed_up_batch_shape(monkeypatch):
    model = auto_model(monkeypatch, compiler=True)
    model.warm_up(tiny_layers(batch=4))
    assert model.calls == [True]  # the warm-up compiled it
    assert model.compiles(tiny_layers(batch=4))
    assert not model.compiles(tiny_layers(batch=3))  # a last partial batch runs eagerly: no second compile


def test_auto_without_a_compiler_runs_eagerly(monkeypatch):
    model = auto_model(monkeypatch, compiler=False)
    model.warm_up(tiny_layers(batch=4))
    assert model.calls == [] and not model.compiles(tiny_layers(batch=4))


def test_off_keeps_the_backbone_unfolded():
    from test_fused_step import TinyBackbone, tiny_config

    assert not CFA(TinyBackbone(), tiny_config(**{"model.compile": "off"}).model).extractor.fold
    assert CFA(TinyBackbone(), tiny_config(**{"model.compile": "auto"}).model).extractor.fold


def test_the_bfloat16_last_stage_is_opt_in_and_only_under_mixed(caplog):
    from test_fused_step import TinyBackbone, tiny_config

    def flag(precision: str, **overrides: str) -> bool:
        model = CFA(TinyBackbone(), tiny_config(**overrides).model, precision=precision)
        return model.extractor.last_stage_bfloat16

    assert not flag("mixed")  # off by default
    assert flag("mixed", **{"model.last_stage_bfloat16": "true"})
    with caplog.at_level("WARNING"):
        assert not flag("float32", **{"model.last_stage_bfloat16": "true"})
        assert not flag("bfloat16", **{"model.last_stage_bfloat16": "true"})  # autocast: the whole backbone
    said = [record.getMessage() for record in caplog.records if "last_stage_bfloat16" in record.getMessage()]
    assert len(said) == 2 and "runs float32" in said[0] and "runs bfloat16" in said[1]


@pytest.mark.skipif(compiled.compiler_missing("cpu") is not None, reason="no C++ compiler for torch.compile")
def test_auto_scores_a_larger_batch_in_parts_of_the_compiled_shape(monkeypatch):
    """Training compiles its micro-batch shape; scoring a larger batch runs in parts of that shape (the last
    part eagerly), equal to the whole batch scored eagerly."""
    from test_fused_step import TinyBackbone, tiny_config

    monkeypatch.setattr(compiled, "AUTO_MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    model = CFA(TinyBackbone(), tiny_config(**{"model.compile": "auto"}).model, precision="mixed")
    model.memory_bank = torch.randn(64, model.descriptor.out_channels)
    model.warm_up(tiny_layers(batch=2))
    layers = tiny_layers(batch=5)
    with torch.no_grad():
        parts = model.scoring_parts(layers)
        in_parts = model.nearest(layers, 3)
        whole, _ = describe_and_match(model.descriptor.projection, layers, model.prepared_bank(), 3)
    assert [part[0].shape[0] for part in parts] == [2, 2, 1]
    assert all(torch.equal(part[1], layer[2:4]) for part, layer in zip(zip(*parts), layers))
    assert model.compiles(parts[0]) and model.compiles(parts[1]) and not model.compiles(parts[2])
    assert COMPILED_FRONT.failure is None  # compiled, not fallen back
    torch.testing.assert_close(in_parts, whole, rtol=1e-5, atol=1e-5)
    assert len(model.scoring_parts(tiny_layers(batch=2))) == 1  # the compiled shape itself: whole
    with torch.enable_grad():  # training steps are never split here (train.micro_batches splits them)
        assert len(model.scoring_parts(layers)) == 1
