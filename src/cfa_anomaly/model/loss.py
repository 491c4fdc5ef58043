"""The coupled-hypersphere loss: attract the K nearest centres inside radius r, repel the next J."""

from __future__ import annotations

import torch
import torch.nn as nn


class CoupledHypersphereLoss(nn.Module):
    """L = (1/nu) mean relu(d_k - r^2), k <= K  +  (1/nu) mean relu(r^2 - d_j - alpha), K < j <= K+J.

    d are the squared distances of each patch feature to its K + J nearest centres of the memory bank, sorted
    ascending (the model's search finds them: CFA.loss); r is a learned parameter.
    """

    def __init__(self, K: int = 3, J: int = 3, nu: float = 1e-3, alpha: float = 0.1, radius_init: float = 1e-5):
        super().__init__()
        self.K, self.J, self.nu, self.alpha = K, J, nu, alpha
        self.radius = nn.Parameter(torch.tensor(float(radius_init)))

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """dist: (N, K + J) squared distances to the nearest centres, ascending."""
        r2 = self.radius.pow(2)
        attraction = torch.relu(dist[:, : self.K] - r2).mean() / self.nu
        if self.J == 0:
            return attraction
        repulsion = torch.relu(r2 - dist[:, self.K: self.K + self.J] - self.alpha).mean() / self.nu
        return attraction + repulsion
