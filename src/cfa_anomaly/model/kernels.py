"""Measured kernel choices for this machine: the bank's layout in the search product, and whether bfloat16
pays (model.precision=auto).

The search is one (rows x (D + 3)) @ ((D + 3) x centres) product per chunk of rows. oneDNN's CPU kernels
are sensitive to the layout of the second operand: on a Xeon with AMX, a contiguous (D + 3, centres)
copy ran the wide_resnet50_2 shape (512 x 1795 x 3136, bfloat16) 1.6x faster than the transposed view of
the (centres, D + 3) bank, while on the AMD EPYC the project was first tuned on the view was the faster
(benchmarks/README.md). A third layout, "packed", pads the inner size with zeros to a multiple of
PACKED_ALIGN and packs the bank once into the blocked layout of oneDNN's matrix kernels (the product then
runs as torch.ops.mkldnn._linear_pointwise, which copies no operand into its layout per call): on the AMX
Xeon 2.3 against 3.3 ms per 512-row chunk for the contiguous copy (the packed bank at the unpadded 1795 took
4.4 ms). So on a CPU the layout is chosen by a short probe of each (tens of ms, once per shape), remembered
per machine in a small JSON file, so that every later run on the machine (a resumed training too) uses the
same kernels; set CFA_ANOMALY_BANK_LAYOUT=view|contiguous|packed to fix it. On a GPU the view is used
(cuBLAS takes transposed operands natively).

Likewise auto precision picks `mixed` on a CPU only where the flags announce bfloat16 units and a probe
of the wide_resnet50_2 search product finds bfloat16 at least 1.25x faster than float32 (on the AMX Xeon
above: ~5x; a CPU that emulates bfloat16 would lose accuracy for nothing); failing that, the faster of
`int8-search` and `projected-search` where a probe of each search (search_probe.py) finds it at least 1.25x
faster than the float32 search.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from cfa_anomaly.io_utils import atomic_write_text

log = logging.getLogger(__name__)
LAYOUTS = ("view", "contiguous", "packed")
ENV_LAYOUT = "CFA_ANOMALY_BANK_LAYOUT"
ENV_CACHE = "CFA_ANOMALY_CACHE"  # a folder; default ~/.cache/cfa-anomaly
PROBE_ROUNDS = 5
MATRIX_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx2")
# settings that hold kernels to older instructions (oneDNN, ATen, MKL)
CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
MARGIN = 0.05  # another layout must be at least 5% faster to be chosen over the view
PACKED_ALIGN = 32  # the packed layout's inner size: a multiple of this (oneDNN's AMX tiles take 32 bf16)
Products = list[tuple[torch.Tensor, torch.Tensor]]  # (left, right) operands of search_product


def cache_file() -> Path:
    folder = os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "cfa-anomaly"
    return Path(folder) / "kernels.json"


@cache
def _cpu_name() -> str:
    """The CPU as far as kernels differ: model name and number, and its matrix extensions (a VM may hide the
    model name; AMX and AVX512-BF16 decide which oneDNN kernels exist), and the CAPS set to cap them (a
    choice measured without the cap would not hold under it)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    extensions = [flag for flag in MATRIX_FLAGS if flag in flags]
    name = fields.get("model name") or platform.processor() or platform.machine()
    described = f"{name} (model {fields.get('model', '?')}; {' '.join(extensions) or 'no matrix extensions'})"
    for variable in CAPS:  # oneDNN's or ATen's kernels limited to an older instruction set
        if os.environ.get(variable):
            described += f"; {variable}={os.environ[variable]}"
    return described


def bank_packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the packed layout can run here: oneDNN's linear ops on a CPU, float32, or bfloat16 where
    oneDNN supports it on this CPU."""
    ops = torch.ops.mkldnn
    if not (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")):
        return False
    return dtype == torch.float32 or bool(getattr(ops, "_is_mkldnn_bf16_supported", lambda: False)())


def padded_width(inner: int, layout: str) -> int:
    """The search rows' width for a layout: inner, or for packed the next multiple of PACKED_ALIGN."""
    return -(-inner // PACKED_ALIGN) * PACKED_ALIGN if layout == "packed" else inner


def pack_bank(bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """The (centres, width) bank in oneDNN's blocked layout for products with chunk-row operands (opaque:
    use only through search_product)."""
    return torch.ops.mkldnn._reorder_linear_weight(bank, chunk)


def search_product(rows: torch.Tensor, right: torch.Tensor, packed: bool) -> torch.Tensor:
    """rows @ right: right is the (width, centres) bank operand, or with packed the pack_bank'ed bank."""
    if packed:
        return torch.ops.mkldnn._linear_pointwise(rows, right, None, "none", [], "")
    return torch.mm(rows, right)


def search_operands(chunk: int, inner: int, centres: int, dtype: torch.dtype) -> dict[str, Products]:
    """Random rows and bank of the search product's shape in dtype: the bank as each layout available."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(chunk, inner, generator=generator).to(dtype)
    bank = torch.randn(centres, inner, generator=generator).to(dtype)
    operands = {"view": [(rows, bank.t())], "contiguous": [(rows, bank.t().contiguous())]}
    if bank_packing_available(rows.device, dtype):
        pad = padded_width(inner, "packed") - inner
        padded_bank = torch.nn.functional.pad(bank, (0, pad))
        operands["packed"] = [(torch.nn.functional.pad(rows, (0, pad)), pack_bank(padded_bank, chunk))]
    return operands


def best_seconds(candidates: dict[str, Products]) -> dict[str, float]:
    """Seconds of the fastest product of each candidate (best_calls)."""
    def calls(name: str, products: Products) -> Callable[[], None]:
        def run() -> None:
            for left, right in products:
                search_product(left, right, name == "packed")
        return run

    return best_calls({name: calls(name, products) for name, products in candidates.items()})


def best_calls(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds of each call, timed alternately (a busy machine slows all alike), best of PROBE_ROUNDS,
    after one warm-up each (kernel generation and caches)."""
    for call in calls.values():
        call()
    seconds = dict.fromkeys(calls, float("inf"))
    for _ in range(PROBE_ROUNDS):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds


def probe_layout(chunk: int, inner: int, centres: int, dtype: torch.dtype) -> tuple[str, dict[str, float]]:
    """Time the search product with each layout available on random data; the fastest (the view unless
    another wins by MARGIN) and the seconds each took."""
    seconds = best_seconds(search_operands(chunk, inner, centres, dtype))
    fastest = min(seconds, key=seconds.__getitem__)
    best = fastest if seconds[fastest] < (1.0 - MARGIN) * seconds["view"] else "view"
    return best, seconds


_chosen: dict[str, str] = {}


def _remembered(key: str, allowed: tuple[str, ...], measure) -> str:
    """The machine's remembered answer for key (this process, then cache_file()), else measure() and
    remember it (in the file when it can be written)."""
    if key in _chosen:
        return _chosen[key]
    path = cache_file()
    try:
        remembered = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        remembered = {}
    if remembered.get(key) in allowed:
        _chosen[key] = remembered[key]
        return _chosen[key]
    _chosen[key] = measure()
    try:
        atomic_write_text(path, json.dumps({**remembered, key: _chosen[key]}, indent=1))
    except OSError as err:  # a read-only home: the choice then holds for this process only
        log.debug("cannot remember %s in %s: %s", key, path, err)
    return _chosen[key]


def bank_layout(device: torch.device, dtype: torch.dtype, chunk: int, inner: int, centres: int) -> str:
    """"view", "contiguous" or "packed" for a search product of this shape: fixed by
    CFA_ANOMALY_BANK_LAYOUT, else the machine's remembered choice, else a probe (remembered in cache_file()
    when it can be written). packed only where bank_packing_available (else the view)."""
    forced = os.environ.get(ENV_LAYOUT)
    if forced:
        if forced not in LAYOUTS:
            raise ValueError(f"{ENV_LAYOUT}={forced!r} is invalid: use one of {', '.join(LAYOUTS)}")
        return "view" if forced == "packed" and not bank_packing_available(device, dtype) else forced
    if device.type != "cpu":
        return "view"
    # "layouts 3": choices remembered before the packed layout existed are probed again
    key = f"{_cpu_name()} | torch {torch.__version__} | {dtype} | {chunk}x{inner}x{centres} | layouts 3"

    def measure() -> str:
        choice, seconds = probe_layout(chunk, inner, centres, dtype)
        log.debug("search product %s: %s (probe: %s)", key, choice,
                  ", ".join(f"{name} {value * 1000:.2f} ms" for name, value in seconds.items()))
        return choice

    return _remembered(key, LAYOUTS, measure)


# The search product of wide_resnet50_2 at 224 px: the shape the auto precision is decided on.
PRECISION_PROBE_SHAPE = (512, 1795, 3136)
BFLOAT16_GAIN = 1.25  # how much faster than float32 a search must be for auto to pick it


def probe_bfloat16(chunk: int, inner: int, centres: int) -> dict[str, float]:
    """Seconds of the search product in float32 and in bfloat16, each in its faster layout."""
    candidates = {}
    for dtype in (torch.float32, torch.bfloat16):
        layouts = search_operands(chunk, inner, centres, dtype)
        name = str(dtype).split(".")[-1]
        candidates[name] = [product for layout, products in layouts.items() if layout != "packed"
                            for product in products]
    return best_seconds(candidates)


def fastest(names: tuple[str, ...], probe: Callable[..., dict[str, float]]) -> str:
    """The fastest of `names` (keys of probe's result, with float32) where it runs the search at least
    BFLOAT16_GAIN times faster than float32 on this CPU, else float32: probed once at
    PRECISION_PROBE_SHAPE, remembered per machine like the layout."""
    shape = "x".join(map(str, PRECISION_PROBE_SHAPE))
    key = f"{_cpu_name()} | torch {torch.__version__} | {' or '.join(names)} vs float32 | {shape}"

    def measure() -> str:
        seconds = probe(*PRECISION_PROBE_SHAPE)
        best = min(names, key=seconds.__getitem__)
        choice = best if seconds[best] * BFLOAT16_GAIN <= seconds["float32"] else "float32"
        timings = ", ".join(f"{label} {value * 1000:.2f} ms" for label, value in seconds.items())
        log.debug("%s: %s (probe: %s)", key, choice, timings)
        return choice

    return _remembered(key, (*names, "float32"), measure)


def bfloat16_pays() -> bool:
    """Whether this CPU runs the search product in bfloat16 at least BFLOAT16_GAIN times faster than in
    float32: where it does not, auto precision does not pick mixed even on a CPU whose flags announce
    bfloat16 units."""
    return fastest(("bfloat16",), lambda *shape: probe_bfloat16(*shape)) == "bfloat16"
