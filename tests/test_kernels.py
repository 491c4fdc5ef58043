"""The search product's bank layout: chosen by a probe once per machine and shape, remembered, overridable,
and equal in result (up to the product's own rounding) whichever layout runs."""

from __future__ import annotations

import json

import pytest
import torch

from cfa_anomaly.model import kernels, search_probe
from cfa_anomaly.model.distances import candidate_centres, centre_bank, search_rows


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(kernels.ENV_LAYOUT, raising=False)
    monkeypatch.setattr(kernels, "_chosen", {})
    return tmp_path / "kernels.json"


def test_probe_result_is_remembered_per_machine_and_shape(fresh_cache, monkeypatch):
    calls = []

    def probe(chunk, inner, centres, dtype):
        calls.append((chunk, inner, centres))
        return "contiguous", {"view": 2.0, "contiguous": 1.0}

    monkeypatch.setattr(kernels, "probe_layout", probe)
    cpu = torch.device("cpu")
    assert kernels.bank_layout(cpu, torch.bfloat16, 512, 99, 300) == "contiguous"
    assert kernels.bank_layout(cpu, torch.bfloat16, 512, 99, 300) == "contiguous"
    assert calls == [(512, 99, 300)]  # probed once in this process
    saved = json.loads(fresh_cache.read_text())
    assert list(saved.values()) == ["contiguous"] and "512x99x300" in next(iter(saved))
    monkeypatch.setattr(kernels, "_chosen", {})  # a new process on the same machine reads the file
    assert kernels.bank_layout(cpu, torch.bfloat16, 512, 99, 300) == "contiguous" and len(calls) == 1
    assert kernels.bank_layout(cpu, torch.bfloat16, 512, 99, 301) == "contiguous" and len(calls) == 2


def test_environment_fixes_the_layout_and_gpus_use_the_view(fresh_cache, monkeypatch):
    monkeypatch.setenv(kernels.ENV_LAYOUT, "view")
    assert kernels.bank_layout(torch.device("cpu"), torch.float32, 512, 9, 10) == "view"
    monkeypatch.setenv(kernels.ENV_LAYOUT, "sideways")
    with pytest.raises(ValueError, match=kernels.ENV_LAYOUT):
        kernels.bank_layout(torch.device("cpu"), torch.float32, 512, 9, 10)
    monkeypatch.delenv(kernels.ENV_LAYOUT)
    assert kernels.bank_layout(torch.device("cuda"), torch.bfloat16, 8192, 9, 10) == "view"
    assert not fresh_cache.exists()


def test_a_real_probe_picks_a_layout_and_times_both(fresh_cache):
    choice, seconds = kernels.probe_layout(64, 35, 200, torch.float32)
    available = [layout for layout in kernels.LAYOUTS
                 if layout != "packed" or kernels.bank_packing_available(torch.device("cpu"), torch.float32)]
    assert choice in available and set(seconds) == set(available)
    assert all(value > 0 for value in seconds.values())


@pytest.mark.parametrize("dtype_low", [False, True])
def test_every_layout_finds_the_same_neighbours(fresh_cache, monkeypatch, dtype_low):
    generator = torch.Generator().manual_seed(0)
    centres, points = torch.randn(300, 96, generator=generator), torch.randn(700, 96, generator=generator)
    packs = kernels.bank_packing_available(torch.device("cpu"), torch.bfloat16 if dtype_low else torch.float32)
    found = {}
    for layout in kernels.LAYOUTS:
        monkeypatch.setenv(kernels.ENV_LAYOUT, layout)
        bank = centre_bank(centres, torch.bfloat16 if dtype_low else torch.float32)
        assert bank.search_t.is_contiguous() == (layout == "contiguous")
        assert (bank.packed is not None) == (layout == "packed" and packs)
        assert bank.width == (128 if bank.packed is not None else 99)  # 96 + 3, padded to a multiple of 32
        torch.testing.assert_close(bank.search_t.t(), bank.search, rtol=0, atol=0)
        rows = search_rows(points - bank.offset, bank)
        assert rows.shape[1] == bank.width and not rows[:, 96: bank.width - 3].any()  # zeros, |p|^2, 1, 1
        found[layout] = candidate_centres(rows, bank, 6)
    for layout in ("contiguous", "packed"):
        agree = (found["view"] == found[layout]).all(dim=1).float().mean().item()
        assert agree > 0.99, layout  # equal up to near-ties rounded differently by the kernels


@pytest.mark.parametrize(("units", "bfloat16", "searches", "expected"), [
    (True, {"float32": 5.0, "bfloat16": 1.0}, {"float32": 5.0, "int8": 1.0, "projected": 1.0}, "mixed"),
    (True, {"float32": 1.0, "bfloat16": 0.9}, {"float32": 1.0, "int8": 0.5, "projected": 0.9}, "int8-search"),
    (True, {"float32": 1.0, "bfloat16": 0.9}, {"float32": 1.0, "int8": 0.9, "projected": 0.9}, "float32"),
    (False, None, {"float32": 4.0, "int8": 1.0, "projected": 2.0}, "int8-search"),
    (False, None, {"float32": 4.0, "int8": 2.0, "projected": 1.0}, "projected-search"),
    (False, None, {"float32": 1.0, "int8": float("inf"), "projected": 0.7}, "projected-search"),
    (False, None, {"float32": 1.0, "int8": 1.1, "projected": 0.9}, "float32"),
])
def test_auto_precision_takes_what_measurably_pays_bfloat16_first_then_the_faster_search(
        fresh_cache, monkeypatch, units, bfloat16, searches, expected):
    from cfa_anomaly.model import precision

    calls = {"bfloat16": 0, "searches": 0}

    def probe(name: str, seconds: dict):
        def timed(*shape):
            calls[name] += 1
            return seconds
        return timed

    monkeypatch.setattr(precision, "has_bfloat16_matrix_units", lambda device: units)
    monkeypatch.setattr(kernels, "probe_bfloat16", probe("bfloat16", bfloat16))
    monkeypatch.setattr(search_probe, "probe_searches", probe("searches", searches))
    cpu = torch.device("cpu")
    assert precision.resolve_precision("auto", cpu) == expected
    assert precision.resolve_precision("auto", cpu) == expected  # remembered: each probe runs at most once
    assert calls["bfloat16"] == int(units) and calls["searches"] == int(expected != "mixed")
    assert precision.resolve_precision("float32", cpu) == "float32"  # an explicit choice is kept
    monkeypatch.setattr(kernels, "_chosen", {})  # a new process on the machine: remembered in the file
    assert precision.resolve_precision("auto", cpu) == expected and calls["searches"] <= 1


def test_a_real_bfloat16_probe_times_both(fresh_cache):
    seconds = kernels.probe_bfloat16(32, 35, 64)
    assert set(seconds) == {"float32", "bfloat16"} and all(v > 0 for v in seconds.values())


def test_a_real_search_probe_times_each_search(fresh_cache):
    seconds = search_probe.probe_searches(32, 35, 64)
    assert set(seconds) == {"float32", "int8", "projected"} and all(v > 0 for v in seconds.values())


def test_the_search_probe_takes_well_under_a_second_at_the_shape_auto_decides_on(fresh_cache):
    """The first model built with auto on a CPU where bfloat16 does not pay waits for it (the bank layout's
    probe of the same shape comes first and is remembered, as a float32 model would have it)."""
    import time

    from cfa_anomaly.model.distances import centre_bank

    chunk, inner, centres = kernels.PRECISION_PROBE_SHAPE
    centre_bank(torch.randn(centres, inner - 3))  # the layout probe, remembered
    start = time.perf_counter()
    seconds = search_probe.probe_searches(chunk, inner, centres)
    assert time.perf_counter() - start < 5.0  # 0.5-0.8 s on a quiet 2-core EPYC; a shared one is slower
    assert seconds["projected"] < seconds["float32"]  # its bank certifies every row


def test_a_model_with_a_packed_bank_pickles_and_copies(fresh_cache, monkeypatch):
    """The packed bank is an opaque oneDNN tensor (not picklable): a model that has prepared it still pickles
    and deep-copies (the caches are left out and made again), and the copy scores alike."""
    import copy
    import pickle

    from test_model import stub_model

    from cfa_anomaly.config import Config
    from cfa_anomaly.train import init_memory_bank

    monkeypatch.setenv(kernels.ENV_LAYOUT, "packed")
    model = stub_model(precision="mixed")
    cached = model.aggregate(torch.rand(2, 3, 32, 32))
    init_memory_bank(model, cached, 2, Config())
    with torch.no_grad():
        scores = model.nearest(cached, 3)
    assert model.prepared_bank().packed is not None or not kernels.bank_packing_available(
        torch.device("cpu"), torch.bfloat16)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        with torch.no_grad():
            torch.testing.assert_close(twin.nearest(cached, 3), scores, rtol=0, atol=0)


def test_an_int8_search_model_runs_what_auto_picks_off_the_cpu(caplog):
    """A checkpoint trained with int8-search on a CPU, loaded on another device (meta stands in for a GPU)."""
    from cfa_anomaly.config import load_config
    from cfa_anomaly.model.factory import build_model
    from cfa_anomaly.model.precision import resolve_precision

    cfg = load_config(None, ["model.backbone=mobilenet_v2", "model.pretrained=false", "train.device=cpu",
                             "model.precision=int8-search"])
    device = torch.device("meta")
    with caplog.at_level("WARNING"):
        model = build_model(cfg, device)
    assert model.precision == resolve_precision("auto", device) and model.plan.search != torch.int8
    assert "int8-search runs on a CPU only" in caplog.text
    assert build_model(cfg, torch.device("cpu")).plan.search == torch.int8


def test_a_capped_onednn_instruction_set_is_part_of_the_remembered_machine(monkeypatch):
    kernels._cpu_name.cache_clear()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = kernels._cpu_name()
    kernels._cpu_name.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = kernels._cpu_name()
    kernels._cpu_name.cache_clear()
    assert capped != plain and capped.startswith(plain) and "AVX2" in capped


def test_an_int8_product_that_fails_here_leaves_auto_to_the_other_searches(fresh_cache, monkeypatch):
    from cfa_anomaly.model import distances, precision

    def broken(*args, **kwargs):
        raise RuntimeError("no int8 kernels on this CPU")

    monkeypatch.setattr(precision, "has_bfloat16_matrix_units", lambda device: False)
    monkeypatch.setattr(distances, "_int8_bank", broken)
    seconds = search_probe.probe_searches(32, 35, 64)
    assert seconds["int8"] == float("inf") and seconds["float32"] < float("inf")
    monkeypatch.setattr(search_probe, "probe_searches", lambda *shape: {**seconds, "projected": 1e9})
    assert precision.resolve_precision("auto", torch.device("cpu")) == "float32"
