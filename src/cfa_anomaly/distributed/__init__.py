"""Running the grid and predictions on a Ray cluster (the `ray` extra); the in-process paths need none of it.

Ray is imported only when a Ray executor runs, so the package works without it.
"""

from cfa_anomaly.distributed.cluster import RayMissingError, ray_session, require_ray

__all__ = ["RayMissingError", "ray_session", "require_ray"]
