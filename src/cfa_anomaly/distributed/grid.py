"""The benchmark grid on Ray: every cell is a Ray task with its own CPU (and GPU) request.

Tasks get the cell (a resolved config and a folder: plain data) and read the dataset and write the cell's
folder by path, so the data and the output folder must be at the same paths on every node (a shared
file system). A task that raises or whose worker dies is retried (`retries` times, Ray's max_retries),
then its cell is reported as failed; a user error (a CfaError, e.g. an unreadable image) is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cfa_anomaly.cells import Cell, CellOutcome, failure, run_cell
from cfa_anomaly.console import progress
from cfa_anomaly.distributed.cluster import cluster_resources, ray_session
from cfa_anomaly.errors import CfaError

log = logging.getLogger(__name__)
CellRunner = Callable[[Cell], CellOutcome]


def _cell_task(runner: CellRunner, cell: Cell, threads: int) -> CellOutcome:
    """The body of a cell's Ray task: torch gets as many threads as the task has CPUs."""
    import torch

    torch.set_num_threads(threads)
    try:
        return runner(cell)
    except CfaError as err:  # the user's to fix: the same again on a retry
        return failure(cell, f"{type(err).__name__}: {err}")


@dataclass
class RayExecutor:
    """Cells as Ray tasks on a local instance or on the cluster at `address`.

    cpus_per_task: CPUs each task requests (and torch threads); gpus_per_task: GPUs each requests (None:
    1 where the cluster has GPUs, else 0; a fraction shares a GPU). runner: what a task runs (tests
    replace it).
    """

    address: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: float | None = None
    retries: int = 1
    runner: CellRunner = run_cell
    name: str = "ray"

    def run(self, cells: Sequence[Cell]) -> Iterator[CellOutcome]:
        if not cells:
            return
        with ray_session(self.address) as ray:
            gpus = self.gpus_per_task
            if gpus is None:
                gpus = 1.0 if cluster_resources(ray)["GPU"] >= 1 else 0.0
            task = ray.remote(_cell_task)
            pending = {task.options(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.retries,
                                    retry_exceptions=True, name=f"cfa {cell.key}")
                       .remote(self.runner, cell, self.cpus_per_task): cell for cell in cells}
            log.info("submitted %d cell(s) to Ray, %g CPU and %g GPU each", len(cells), self.cpus_per_task,
                     gpus)
            for _ in progress(range(len(cells)), desc="cells", unit="cell"):
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ref)
                yield self._outcome(ray, ref, cell)

    def _outcome(self, ray, ref, cell: Cell) -> CellOutcome:
        """The task's result, or its final error as a failed cell (after the retries)."""
        attempts = self.retries + 1
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else err
            return failure(cell, f"{type(cause).__name__}: {cause} (after {attempts} attempts)", str(err))
        except ray.exceptions.RayError as err:  # the worker died (killed, out of memory), the node was lost
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return failure(cell, f"{type(err).__name__} (after {attempts} attempts): {reason}", str(err))
