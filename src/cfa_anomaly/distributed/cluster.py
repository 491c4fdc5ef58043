"""Connecting to Ray: a local instance started for one command, or a running cluster (`--address`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from cfa_anomaly.errors import CfaError

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'cfa-anomaly[ray]'"


class RayMissingError(CfaError, ImportError):
    """--executor ray without Ray installed."""


class RayConnectionError(CfaError, ConnectionError):
    """No Ray cluster at the address given."""


def require_ray() -> ModuleType:
    """The ray module, or a RayMissingError that says how to install it."""
    try:
        import ray
        import ray.data  # the predict executor needs it: fail here rather than halfway
    except ImportError as err:
        raise RayMissingError(f"--executor ray needs Ray with Ray Data: {INSTALL_HINT} ({err})") from err
    return ray


def cluster_resources(ray: ModuleType) -> dict[str, float]:
    """The cluster's total CPU and GPU counts (0 when it has none)."""
    resources = ray.cluster_resources()
    return {"CPU": float(resources.get("CPU", 0)), "GPU": float(resources.get("GPU", 0))}


@contextmanager
def ray_session(address: str | None = None) -> Iterator[ModuleType]:
    """Ray connected for the duration: an instance already initialised in this process is used as it is;
    otherwise connect to `address` (e.g. "auto" or "head-node:6379"; None: $RAY_ADDRESS, else the cluster
    this machine runs with `ray start`, else a Ray instance started on this machine for the duration), and
    disconnect at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options = {"address": address} if address else {"include_dashboard": False}
    try:
        ray.init(**options)
    except ConnectionError as err:
        raise RayConnectionError(f"no Ray cluster at --address {address} ({err}); start one with `ray start "
                                 "--head` on the head node (see docs/ray.md)") from err
    resources = cluster_resources(ray)
    log.info("Ray at %s: %g CPUs, %g GPUs", ray.get_runtime_context().gcs_address, resources["CPU"],
             resources["GPU"])
    try:
        yield ray
    finally:
        ray.shutdown()
