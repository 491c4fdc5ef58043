"""One inference thread: the only caller of the Predictor's backend, which micro-batches queued images.

Backends are not all thread-safe (an OpenVINO infer request is not), so every score_batch call happens on
this thread; images that wait in the queue together are scored in one call (up to max_batch).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from cfa_anomaly.inference import Predictor
from cfa_anomaly.serve.errors import ServeError

log = logging.getLogger("cfa_anomaly.serve")


@dataclass
class Scored:
    """One image's result: its (crop, crop) map, its score and the size of the batch it was scored in."""

    anomaly_map: np.ndarray
    score: float
    batch_size: int


class CpuGate:
    """Keeps the request threads' CPU work (decoding, preprocessing) out of the model's turns.

    On a CPU the model's call spreads over every core; a decode running beside it stalls one of its threads
    and every parallel region waits for that one (measured on 2 cores: the model ran ~40% slower per
    image). So request work runs between model calls: many request threads at once, or the model alone.
    The model has priority once it waits. enabled=False (a GPU model) lets everything overlap.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._condition = threading.Condition()
        self._requests = 0
        self._model_waiting = False

    @contextmanager
    def request_turn(self, timeout: float | None = None) -> Iterator[None]:
        """Request-side work; TimeoutError when the model keeps the CPU longer than timeout seconds."""
        if not self.enabled:
            yield
            return
        with self._condition:
            if not self._condition.wait_for(lambda: not self._model_waiting, timeout):
                raise TimeoutError("the model kept the CPU")
            self._requests += 1
        try:
            yield
        finally:
            with self._condition:
                self._requests -= 1
                self._condition.notify_all()

    @contextmanager
    def model_turn(self) -> Iterator[None]:
        """The model's call: waits for the request work under way, holds back new request work."""
        if not self.enabled:
            yield
            return
        with self._condition:
            self._model_waiting = True
            self._condition.wait_for(lambda: self._requests == 0)
        try:
            yield
        finally:
            with self._condition:
                self._model_waiting = False
                self._condition.notify_all()


@dataclass
class _Job:
    image: torch.Tensor  # (3, crop, crop), preprocessed
    future: Future[Scored]


class InferenceWorker:
    """Scores preprocessed images on one thread, batching what is queued together."""

    def __init__(self, predictor: Predictor, max_batch: int = 8, max_queue: int = 256,
                 gate: CpuGate | None = None) -> None:
        self.predictor = predictor
        self.gate = gate or CpuGate(enabled=False)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.images = 0
        self.busy_s = 0.0  # time spent in score_batch

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the thread (again, should it ever have died)."""
        with self._lock:
            if not self.alive:
                self._thread = threading.Thread(target=self._run, name="cfa-inference", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def submit(self, image: torch.Tensor) -> Future[Scored]:
        """Queue one preprocessed image; the future gets a Scored or the backend's exception."""
        if self._queue.qsize() >= self.max_queue:
            raise ServeError("overloaded",
                             f"{self._queue.qsize()} images are waiting for the model; retry later")
        self.start()
        future: Future[Scored] = Future()
        self._queue.put(_Job(image, future))
        return future

    def _more_jobs(self, first: _Job) -> tuple[list[_Job], bool]:
        """first and what else is queued (up to max_batch); (jobs, stop asked)."""
        jobs, stop = [first], False
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            with self.gate.model_turn():  # images being decoded now join this batch
                jobs, stop = self._more_jobs(first)
                # a job whose request timed out is dropped
                jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
                if jobs:
                    self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            maps, scores = self.predictor.score_batch(torch.stack([job.image for job in jobs]))
        except Exception as err:  # reported to each waiting request; the thread goes on
            log.exception("inference failed on a batch of %d images", len(jobs))
            for job in jobs:
                job.future.set_exception(err)
            return
        self.batches += 1
        self.images += len(jobs)
        self.busy_s += time.perf_counter() - started
        for index, job in enumerate(jobs):
            job.future.set_result(Scored(maps[index], float(scores[index]), len(jobs)))
