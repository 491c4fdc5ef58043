"""This project's default path against anomalib's CFA, on the same images, in one run (not a test).

    python benchmarks/vs_anomalib.py [--repeats 3] [--images 16 --epochs 2 --batch 4]
    python benchmarks/vs_anomalib.py --device cuda --anomalib-python python3   # a GPU row, anomalib importable

anomalib pins its own dependencies, so it lives in its own virtual environment, `.venv-anomalib/` at the
repository root (ignored by git): created on the first run with `pip install torch==<this torch>
torchvision==<this torchvision> anomalib==2.7.0` (the same torch as this project's, so both sides run the
same kernels), reused after. Both sides: wide_resnet50_2 with random weights (no download here; weights
do not change the arithmetic), the same seeded random 224 px images, batch 4, 2 epochs, torch's default
threads. This project runs `benchmarks/speed.py --single <precision>` with the precision that
`model.precision=auto` resolves to on this machine; anomalib runs `benchmarks/anomalib_cfa.py` (its torch
model and loss, its optimizer settings). Each run is its own process (peak RSS is its own); the two sides
alternate, --repeats times, and each figure is its side's best run (a shared machine's speed varies).
Each repeat's own ratios (its two runs neighbours in time) and their median are printed too, to show
the spread; the goals' verdict is on the best runs.
Before each run the script waits (up to --wait seconds) until other processes use under --quiet of the
CPUs, and it prints the share of the CPUs that other processes used during each run: on 2 cores one other
busy thread slows a 2-thread torch run several-fold (its threads wait for each other), so a run with a
large share is not a reading of this code.

--device cuda times both sides on the GPU (images moved there before the timings, peak GPU memory shown);
auto then resolves for the GPU. --anomalib-python names an interpreter that already imports anomalib (a
machine without a package registry, where the venv cannot be made: e.g. its wheels installed with
--target and PYTHONPATH set); the CPU-share checks stay, and on a GPU they only say whether the machine
was busy.

What "training" means on each side: anomalib runs the frozen backbone in every training step; this
project runs it once and caches the pooled maps, so its one-time cost (feature pass + memory bank) is
shown apart, like anomalib's memory-bank initialisation (a backbone + descriptor pass of its own).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import machine_line

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cfa_anomaly.model.precision import resolve_precision

HERE = Path(__file__).resolve().parent
VENV = REPO / ".venv-anomalib"
ANOMALIB = "anomalib==2.7.0"
# the speed goals: this project's speed over anomalib's on this CPU (goal, stretch)
GOALS = {"training": (10.0, 14.0), "inference": (4.0, 5.6)}
LOWER_IS_BETTER = ("bank_ms_per_image", "feature_ms_per_image", "train_ms_per_image_epoch", "peak_rss_gib",
                   "peak_gpu_gib")


def anomalib_python() -> Path:
    """The Python of anomalib's virtual environment, created and installed on first use."""
    python = VENV / "bin" / "python"
    wanted = ANOMALIB.split("==")[1]
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('anomalib'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False).stdout.strip()
        if found == wanted:
            return python
    else:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pins = [f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={importlib.metadata.version('torchvision').split('+')[0]}"]
    print(f"installing {ANOMALIB} into {VENV} ({', '.join(pins)}) ...", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins, ANOMALIB], check=True)
    return python


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process's finished children)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def others_share(start: tuple[float, float], seconds: float) -> float:
    """The share of all CPUs that processes other than our children used since `start`."""
    busy, children = cpu_seconds()
    return max(0.0, (busy - start[0]) - (children - start[1])) / (seconds * os.cpu_count())


def wait_until_quiet(quiet: float, wait: float) -> float:
    """Sample 2 s at a time until other processes use under `quiet` of the CPUs, or `wait` seconds passed;
    the last share seen."""
    deadline = time.monotonic() + wait
    while True:
        start = cpu_seconds()
        time.sleep(2.0)
        share = others_share(start, 2.0)
        if share < quiet or time.monotonic() > deadline:
            return share
        time.sleep(10.0)


def run_json(command: list[str], quiet: float, wait: float) -> dict:
    """Run a child that prints one JSON line last, once the machine is quiet; its result, with the others'
    CPU share before and during the run."""
    before = wait_until_quiet(quiet, wait)
    start, clock = cpu_seconds(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    during = others_share(start, time.monotonic() - clock)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "others_before": before, "others_during": during}


def best(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, float) and not k.startswith("others_")]
    return {k: (min if k in LOWER_IS_BETTER else max)(run[k] for run in runs) for k in keys}


def speedups(ours: dict, theirs: dict) -> dict[str, float]:
    """This project's speed over anomalib's in one result each: training (ms per image and epoch) and
    inference (images/s)."""
    return {"training": theirs["train_ms_per_image_epoch"] / ours["train_ms_per_image_epoch"],
            "inference": ours["inference_images_per_second"] / theirs["inference_images_per_second"]}


def paired_ratios(ours: list[dict], theirs: list[dict]) -> dict[str, list[float]]:
    """Each repeat's own speedups, its two runs being neighbours in time: a slow spell of the machine that
    hits both cancels out, one that hits only one side shows as an outlier."""
    pairs = [speedups(mine, other) for mine, other in zip(ours, theirs)]
    return {kind: [pair[kind] for pair in pairs] for kind in ("training", "inference")}


def verdict(ratio: float, goal: tuple[float, float], device: str) -> str:
    if device != "cpu":
        return "the goals are a CPU's"
    if ratio >= goal[1]:
        return f"goal {goal[0]:g}x and stretch {goal[1]:g}x met"
    return f"goal {goal[0]:g}x {'met' if ratio >= goal[0] else 'NOT met'}, stretch {goal[1]:g}x not met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the best is shown")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=0.05,
                        help="start a run once other processes use under this share of the CPUs")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for that before each run")
    parser.add_argument("--also", nargs="*", default=[], metavar="VARIANT",
                        help="other variants of this project to time in the same runs (benchmarks/speed.py's, "
                             "e.g. mixed-bf16-last); the default path's ratios are the goals'")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    parser.add_argument("--anomalib-python", type=Path,
                        help="an interpreter that imports anomalib (default: .venv-anomalib, made if missing)")
    args = parser.parse_args()
    python = args.anomalib_python or anomalib_python()
    precision = resolve_precision("auto", torch.device(args.device))
    sizes = ["--images", str(args.images), "--epochs", str(args.epochs), "--batch", str(args.batch), "--device",
             args.device]
    commands = {
        "anomalib": [str(python), str(HERE / "anomalib_cfa.py"), *sizes],
        "cfa-anomaly": [sys.executable, str(HERE / "speed.py"), "--single", precision, *sizes],
    }
    for variant in args.also:
        commands[variant] = [sys.executable, str(HERE / "speed.py"), "--single", variant, *sizes]
    print(machine_line(("torch", "torchvision")))
    if args.device != "cpu":
        print(f"device {args.device}: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(f"wide_resnet50_2 (random weights), {args.images} seeded random images 224 px, {args.epochs} epochs, "
          f"batch {args.batch}; this project: model.precision=auto -> {precision}; best of {args.repeats} "
          "alternating runs, each in its own process")
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for repeat in range(args.repeats):
        order = list(commands) if repeat % 2 == 0 else list(commands)[::-1]  # neither side always first
        for name in order:
            result = run_json(commands[name], args.quiet, args.wait)
            runs[name].append(result)
            print(f"  run {repeat + 1} {name:15} "
                  f"train {result['train_ms_per_image_epoch']:7.1f} ms/img/epoch  "
                  f"infer {result['inference_images_per_second']:6.2f} img/s  "
                  f"RSS {result['peak_rss_gib']:.2f} GiB  (other processes: {100 * result['others_before']:.0f}% "
                  f"of the CPUs before, {100 * result['others_during']:.0f}% during)", flush=True)
    print_results(runs, precision, args.device)


def print_results(runs: dict[str, list[dict]], precision: str, device: str) -> None:
    """The best run of each side, the ratios over anomalib and, for the default path, each repeat's own."""
    theirs = best(runs["anomalib"])
    version = runs["anomalib"][0]["anomalib_version"]
    print(f"{'':24} {'one-time ms/img':>16} {'train ms/img/epoch':>19} {'infer img/s':>12} {'peak RSS GiB':>13}")
    print(f"{'anomalib ' + version:24} {theirs['bank_ms_per_image']:16.1f} "
          f"{theirs['train_ms_per_image_epoch']:19.1f} {theirs['inference_images_per_second']:12.2f} "
          f"{theirs['peak_rss_gib']:13.2f}")
    ours = {name: best(results) for name, results in runs.items() if name != "anomalib"}
    for name, row in ours.items():
        label = "cfa-anomaly " + (precision if name == "cfa-anomaly" else name)
        one_time = row["feature_ms_per_image"] + row["bank_ms_per_image"]
        print(f"{label:28} {one_time:12.1f} {row['train_ms_per_image_epoch']:19.1f} "
              f"{row['inference_images_per_second']:12.2f} {row['peak_rss_gib']:13.2f}")
    row = ours["cfa-anomaly"]
    print("  one-time: anomalib's memory-bank initialisation; this project's feature pass "
          f"({row['feature_ms_per_image']:.1f}) + memory bank ({row['bank_ms_per_image']:.1f})")
    for name, row in ours.items():
        training, inference = speedups(row, theirs).values()
        memory = f"peak RSS x{row['peak_rss_gib'] / theirs['peak_rss_gib']:.2f}"
        if row.get("peak_gpu_gib") and theirs.get("peak_gpu_gib"):
            memory += (f", peak GPU memory {row['peak_gpu_gib']:.2f} against {theirs['peak_gpu_gib']:.2f} GiB "
                       f"(x{row['peak_gpu_gib'] / theirs['peak_gpu_gib']:.2f})")
        if name == "cfa-anomaly":
            print(f"cfa-anomaly over anomalib: training x{training:.2f} "
                  f"({verdict(training, GOALS['training'], device)}), inference x{inference:.2f} "
                  f"({verdict(inference, GOALS['inference'], device)}), {memory}")
            for kind, ratios in paired_ratios(runs[name], runs["anomalib"]).items():
                listed = ", ".join(f"x{ratio:.2f}" for ratio in ratios)
                print(f"  {kind} ratio of each repeat's two runs: {listed} (median x"
                      f"{statistics.median(ratios):.2f}; the goals are best run against best)")
        else:
            print(f"{name} (not the default) over anomalib: training x{training:.2f}, "
                  f"inference x{inference:.2f}, {memory}")



if __name__ == "__main__":
    main()
