"""The probe of the searches that can take the float32 search's place on a CPU where bfloat16 does not pay
(model.precision=auto): int8-search's candidates (rows and centres rounded to int8, exact int32 sums) and
projected-search's certified search (model/search.py).

Each search runs one chunk of the wide_resnet50_2 shape as the model runs it, its candidates' exact
distances included, against the float32 search of the same chunk (product, selection, exact distances); the
faster of the two, where at least 1.25x faster than float32, is auto's choice (kernels.fastest), remembered
per machine. The probe's bank lies in a subspace of PROBE_SHARE of the channels, so the certified search
certifies every row; it is charged FALLBACK_SHARE of the float32 search on top, for the rows that other
features leave open (a conservative charge: the shared sets' real features left none; random-weight
wide_resnet50_2 training left up to half of a step's rows, all settled by widening, none searched in full).

Kept apart from kernels.py, which the distances build on, so that neither imports the other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from cfa_anomaly.model.distances import centre_bank, squared_norms
from cfa_anomaly.model.kernels import best_calls, fastest
from cfa_anomaly.model.projection import GRANULE, projection_of
from cfa_anomaly.model.search import certified_nearest, exact_nearest, nearest_centres

log = logging.getLogger(__name__)
PROBE_K = 6  # neighbours searched: K + J, training's
PROBE_SHARE = 1 / 7  # the probe bank's subspace: a share of D (random wide_resnet50_2: 240 / 1792)
FALLBACK_SHARE = 0.1  # the share of rows the certified search is charged a full float32 search for


def probe_searches(chunk: int, inner: int, centres: int) -> dict[str, float]:
    """Seconds of one chunk's search in float32, int8 (inf where this build's int8 product fails) and
    certified projection (plus FALLBACK_SHARE of float32's), on seeded random data: `centres` centres of
    inner - 3 channels and `chunk` points near them."""
    channels = inner - 3
    dimension = min(channels, GRANULE * math.ceil(channels * PROBE_SHARE / GRANULE))
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(channels, dimension, generator=generator)).Q
    bank_rows = torch.randn(centres, dimension, generator=generator) @ basis.t()
    points = bank_rows[:chunk] + 0.05 * torch.randn(chunk, channels, generator=generator)
    bank = centre_bank(bank_rows)
    projected = bank._replace(projection=projection_of(bank.centred, bank.norms, bank.order, basis))
    centred = points - bank.offset
    norms = squared_norms(centred)
    calls: dict[str, Callable[[], object]] = {
        "float32": lambda: exact_nearest(centred, norms, bank, PROBE_K),
        "projected": lambda: certified_nearest(centred, norms, projected, PROBE_K)}
    try:
        int8 = centre_bank(bank_rows, search=torch.int8)
        nearest_centres(centred, norms, int8, PROBE_K)
        calls["int8"] = lambda: nearest_centres(centred, norms, int8, PROBE_K)
    except RuntimeError as err:
        log.debug("the int8 search cannot run here (%s)", err)
    seconds = {"int8": float("inf"), **best_calls(calls)}
    seconds["projected"] += FALLBACK_SHARE * seconds["float32"]
    return seconds


def faster_search() -> str:
    """int8, projected or float32: the faster of the int8 and the certified search where it is at least
    kernels.BFLOAT16_GAIN times faster than the float32 search on this CPU (probed once per machine), else
    float32. auto precision's choice on a CPU where bfloat16 does not pay."""
    return fastest(("int8", "projected"), lambda *shape: probe_searches(*shape))  # replaceable in tests
