"""Scoring with the torch model: the fast path (fused step, trained precision) or the plain float32 graph."""

from __future__ import annotations

import numpy as np
import torch

from cfa_anomaly.model import CFA
from cfa_anomaly.model.plain import PlainCFA

GRAPHS = ("fast", "plain")


class TorchBackend:
    """images (N, 3, crop, crop) float32 in 0..1 -> (maps (N, crop, crop), scores (N,)) float32 numpy.

    graph "fast": CFA.forward in the precision the model runs (bfloat16 candidates re-ranked by exact
    distances under mixed/bfloat16); "plain": model/plain.py's exact float32 graph, the export path.
    """

    def __init__(self, model: CFA, crop: int, graph: str = "fast") -> None:
        if graph not in GRAPHS:
            raise ValueError(f"graph = {graph!r} is invalid: use one of {', '.join(GRAPHS)}")
        model.eval()
        self.device = model.memory_bank.device
        self.graph = graph
        self.module: torch.nn.Module = model if graph == "fast" else PlainCFA(model, crop).eval()
        if graph == "fast":
            model.prepare_scoring()  # at load, not in the first request
        precision = model.precision if graph == "fast" else "float32"
        self.name = f"torch {graph} ({precision}, {self.device})"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            maps, scores = self.module(images.to(self.device))
            return maps.float().cpu().numpy(), scores.float().cpu().numpy()
