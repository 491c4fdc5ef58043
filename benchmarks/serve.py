"""Load test of `cfa serve` on loopback against offline batch prediction in-process (not a test).

    python benchmarks/serve.py                      # trains mobilenet_v2 on the shared hazelnut set (cached)
    python benchmarks/serve.py --checkpoint C --images DIR --clients 1 4 16 --requests 96

The model: a checkpoint you give, or mobilenet_v2 trained 3 epochs on ../shared/data/hazelnut_toy with
configs/anomaly/unsupervised/cfa/hazelnut.yaml (256 resize, 224 crop; enough for a speed test), cached in
--cache. The images: the set's train and test JPEGs (512 x 512), sent as raw request bodies, cycled.

Offline: the same checkpoint in a Predictor in this process (device cpu, the default fast graph, batch
--max-batch), `predict` over the same image files: decoding, preprocessing and scoring, as the server does.
It is measured before and after the load test (a shared machine's speed drifts). Online: `cfa serve`
in a subprocess (same device, graph and --max-batch), then for each client count a bounded run
(--requests requests or --max-seconds, whichever ends first) of threads that each keep one HTTP
connection and post one image at a time; throughput counts successful answers, latency is per request
as the client sees it (p50/p95/p99), failed counts non-200 answers and transport errors.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import httpx
from machine import machine_line

from cfa_anomaly.config import load_config
from cfa_anomaly.inference import Predictor
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test

HAZELNUT = REPO.parent / "shared" / "data" / "hazelnut_toy"
CONFIG = REPO / "configs" / "anomaly" / "unsupervised" / "cfa" / "hazelnut.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def trained_checkpoint(cache: Path, epochs: int) -> Path:
    """mobilenet_v2 on the shared hazelnut set, trained once into cache."""
    checkpoint = cache / f"hazelnut-mobilenet_v2-{epochs}ep" / runfiles.CHECKPOINT
    if not checkpoint.is_file():
        if not HAZELNUT.is_dir():
            sys.exit(f"{HAZELNUT} is absent: pass --checkpoint and --images")
        cfg = load_config(CONFIG, [f"data.root={HAZELNUT}", "model.backbone=mobilenet_v2", f"train.epochs={epochs}",
                                   "train.device=cpu"])
        print(f"training mobilenet_v2 on hazelnut, {epochs} epochs, into {checkpoint.parent}", flush=True)
        train_and_test(cfg, checkpoint.parent, run_test=False)
    return checkpoint


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "ground_truth" not in p.parts)


def offline_throughput(checkpoint: Path, paths: list[Path], count: int, batch: int) -> float:
    """Images per second of Predictor.predict over `count` files (cycled), after one warm-up batch."""
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    predictor.batch_size = batch
    work = [paths[i % len(paths)] for i in range(count)]
    predictor.predict(work[:batch])
    start = time.perf_counter()
    predictor.predict(work)
    return count / (time.perf_counter() - start)


@dataclass
class LoadResult:
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    failed: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def row(self) -> str:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        batch = np.mean(self.batch_sizes) if self.batch_sizes else 0.0
        return (f"| {self.clients} | {self.ok + self.failed} | {self.failed} | {self.ok / self.wall_s:.2f} | "
                f"{p50:.0f} | {p95:.0f} | {p99:.0f} | {batch:.2f} |")


def load_test(base: str, bodies: list[bytes], clients: int, requests: int, max_seconds: float) -> LoadResult:
    """`clients` threads, one keep-alive connection each, posting images until `requests` or the time is up."""
    result = LoadResult(clients)
    counter = itertools.count()
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120.0) as session:
            while (index := next(counter)) < requests and time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    response = session.post("/predict", content=bodies[index % len(bodies)],
                                            headers={"content-type": "image/jpeg"})
                    good = response.status_code == 200
                    batch = response.json().get("batch_size", 0) if good else 0
                except httpx.HTTPError:
                    good, batch = False, 0
                elapsed = (time.perf_counter() - start) * 1000.0
                with lock:
                    if good:
                        result.latencies_ms.append(elapsed)
                        result.batch_sizes.append(batch)
                    else:
                        result.failed += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - start
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: Path, port: int, max_batch: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cfa_anomaly.cli", "serve", "--checkpoint", str(checkpoint), "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch), "--no-access-log"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("cfa serve did not start (run the command above by hand to see why)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="default: mobilenet_v2 trained on the shared hazelnut set")
    parser.add_argument("--images", type=Path, help="folder of images (default: the hazelnut set)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=320, help="requests per client count (bound)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time per client count (bound)")
    parser.add_argument("--max-batch", type=int, default=8, help="server micro-batch and offline batch size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cfa-serve-bench"))
    args = parser.parse_args()

    print(machine_line())
    checkpoint = args.checkpoint or trained_checkpoint(args.cache, args.epochs)
    paths = image_files(args.images or HAZELNUT)
    bodies = [p.read_bytes() for p in paths]
    print(f"model {checkpoint}; {len(paths)} images ({sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB mean); "
          f"{args.requests} requests or {args.max_seconds:.0f} s per client count; batch {args.max_batch}", flush=True)

    before = offline_throughput(checkpoint, paths, args.requests, args.max_batch)
    print(f"offline Predictor.predict (decode + preprocess + score, batch {args.max_batch}): {before:.2f} img/s",
          flush=True)
    port = free_port()
    server = start_server(checkpoint, port, args.max_batch)
    base = f"http://127.0.0.1:{port}"
    try:
        load_test(base, bodies, 2, 2 * args.max_batch, 60.0)  # warm-up
        engine = httpx.get(f"{base}/model").json()["engine"]
        print(f"\ncfa serve ({engine}), raw JPEG bodies on loopback\n")
        print("| clients | requests | failed | img/s | p50 ms | p95 ms | p99 ms | mean batch |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        results = []
        for clients in args.clients:
            results.append(load_test(base, bodies, clients, args.requests, args.max_seconds))
            print(results[-1].row(), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    after = offline_throughput(checkpoint, paths, args.requests, args.max_batch)
    offline = (before + after) / 2
    print(f"\noffline Predictor.predict: {before:.2f} img/s before, {after:.2f} after the load test; mean {offline:.2f}")
    top = results[-1]
    ratio = top.ok / top.wall_s / offline
    met = ratio >= 0.8 and top.failed == 0
    print(f"{top.clients} clients: {ratio:.0%} of offline throughput, {top.failed} failed requests; goal (>= 80%, "
          f"0 failed) {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
