"""The int8 search's probe: whether, on this CPU, its candidates (rows and centres rounded to int8, exact
int32 sums) cost enough less than the float32 search product for auto precision to pick int8-search.

Kept apart from kernels.py, which the distances build on, so that neither imports the other.
"""

from __future__ import annotations

import logging
import time

import torch

from cfa_anomaly.model.distances import centre_bank, int8_key, quantize_rows
from cfa_anomaly.model.kernels import PROBE_ROUNDS, Products, best_seconds, pays, search_operands

log = logging.getLogger(__name__)


def probe_int8(chunk: int, inner: int, centres: int) -> dict[str, float]:
    """Seconds of the search step's product in float32 (its faster layout) and of the int8 search's key
    (the rows rounded to int8, their product with the bank, its scales applied: distances.int8_key), on
    random data."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(chunk, inner - 3, generator=generator)
    bank = centre_bank(torch.randn(centres, inner - 3, generator=generator), search=torch.int8)
    layouts = search_operands(chunk, inner, centres, torch.float32)
    candidates: dict[str, Products] = {"float32": [product for layout, products in layouts.items()
                                                   if layout != "packed" for product in products]}
    seconds = best_seconds(candidates)
    int8_key(quantize_rows(rows), bank)  # warm-up
    best = float("inf")
    for _ in range(PROBE_ROUNDS):
        start = time.perf_counter()
        int8_key(quantize_rows(rows), bank)
        best = min(best, time.perf_counter() - start)
    return {**seconds, "int8": best}


def int8_pays() -> bool:
    """Whether the int8 search (product and key) runs at least BFLOAT16_GAIN times faster than the float32
    product here: auto precision's choice on a CPU where bfloat16 does not pay. A build whose int8 product
    fails on this CPU counts as not paying (remembered like a slow one)."""
    def probe(*shape: int) -> dict[str, float]:
        try:
            return probe_int8(*shape)  # looked up when probed: replaceable in tests
        except RuntimeError as err:
            log.debug("the int8 search cannot run here (%s): auto keeps float32", err)
            return {"float32": 1.0, "int8": float("inf")}

    return pays("int8", probe)
