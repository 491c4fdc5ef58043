"""Shared by the `cfa serve` tests: the tiny trained model (trained once a session), a free port, and the
real server in a subprocess, waited for on /health and always stopped."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import has_module, requires_mobilenet_weights, small_config

from cfa_anomaly import runfiles

SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "httpx": "httpx",
                 "python-multipart": "python_multipart"}
SERVE_MISSING = [name for name, module in SERVE_MODULES.items() if not has_module(module)]
requires_serve = pytest.mark.skipif(bool(SERVE_MISSING), reason=f"{', '.join(SERVE_MISSING)} not installed "
                                                                "(pip install 'cfa-anomaly[serve]')")
SERVE_TESTS = [requires_mobilenet_weights, requires_serve]  # the serve tests' pytestmark
START_TIMEOUT_S = 90.0
_TRAINED: dict[Path, tuple] = {}


@pytest.fixture(scope="session", name="trained")
def trained_model(synth_root: Path, tmp_path_factory) -> tuple:
    """(checkpoint, test image paths, Predictor, its PredictionResult on them): a tiny model with a held-out
    threshold, trained once a session whichever test module asks first (each module that imports this
    fixture holds its own copy of it, hence _TRAINED)."""
    from cfa_anomaly.inference import Predictor
    from cfa_anomaly.pipeline import train_and_test

    if synth_root not in _TRAINED:
        cfg = small_config(synth_root, **{"data.holdout_fraction": "0.2"})
        output = tmp_path_factory.mktemp("serve_model")
        train_and_test(cfg, output, run_test=False)
        checkpoint = output / runfiles.CHECKPOINT
        paths = sorted((Path(cfg.data.root) / cfg.data.category / "test").rglob("*.png"))
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
        assert predictor.threshold is not None
        _TRAINED[synth_root] = (checkpoint, paths, predictor, predictor.predict(paths))
    return _TRAINED[synth_root]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A `cfa serve` subprocess: where to reach it and its log (stdout and stderr)."""

    base_url: str
    log_path: Path
    verify: ssl.SSLContext | bool = True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_for_health(process: subprocess.Popen, server: RunningServer) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"cfa serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2.0, verify=server.verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"cfa serve did not answer /health within {START_TIMEOUT_S} s:\n{server.log()}")
        time.sleep(0.2)


@contextmanager
def running_server(checkpoint: Path, log_path: Path, *options: str, host: str = "127.0.0.1",
                   env: dict[str, str] | None = None,
                   certfile: Path | None = None) -> Iterator[RunningServer]:
    """`cfa serve --checkpoint ... --host host --port <free>` plus options, up and answering /health; with
    certfile, reached over https and trusting that certificate. Terminated on exit."""
    port = free_port()
    command = [sys.executable, "-m", "cfa_anomaly.cli", "serve", "--checkpoint", str(checkpoint),
               "--device", "cpu", "--host", host, "--port", str(port), *options]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: no OpenMP spinning
    environment.pop("CFA_SERVE_TOKEN", None)  # a token only where the test gives one
    environment.update(env or {})
    scheme, verify = "http", True
    if certfile is not None:
        scheme, verify = "https", ssl.create_default_context(cafile=str(certfile))
    server = RunningServer(f"{scheme}://127.0.0.1:{port}", log_path, verify)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        _wait_for_health(process, server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
