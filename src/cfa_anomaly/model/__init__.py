"""The CFA model, assembled from small parts: descriptor, memory bank, loss, scorer."""

from cfa_anomaly.model.cfa import CFA

__all__ = ["CFA"]
