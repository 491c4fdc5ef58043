"""report.html with many images: how long headless Chromium takes to make it interactive and to scroll to the
bottom, and how large the page and its thumbnails are.

    python benchmarks/report_page.py --images 5000              # a fake run of 5,000 scored images
    python benchmarks/report_page.py --open runs/demo/<time>/report.html runs/demo/<time>/*/report.html

The fake run has no model: a scores.csv of N images (good and defective, scores drawn from two normal
distributions), a metrics.json with its threshold and counts, and one small generated picture per image
(160 px JPEG, no panels), from which the report draws its 128 px thumbnails. Times are in the page
(performance.now): "interactive" is navigation start to the end of the page's script (tables, charts and
the first cards drawn); "bottom" is a jump to the end of the page until every card there has its thumbnail
decoded; "sweep" scrolls through the whole gallery a window height per frame (all cards new in each frame)
and reports the median and longest frame; "slider" is a threshold change until the next frame. Uses
Debian's chromium and /usr/bin/chromedriver.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_line
from PIL import Image, ImageDraw

from cfa_anomaly import runfiles
from cfa_anomaly.html_report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import CHROMEDRIVER, chromium_binary  # noqa: E402

KINDS = ("good", "scratch", "hole", "stain", "missing")
THRESHOLD = 0.45
BOTTOM = """const done = arguments[arguments.length - 1], start = performance.now();
const grid = document.getElementById("gallery");
window.scrollTo(0, document.body.scrollHeight);
function ready() {
  const cards = [...grid.children], last = Math.max(...cards.map((c) => parseFloat(c.style.top)));
  return last + 2 * 210 >= grid.clientHeight && cards.every((c) => { const i = c.querySelector("img");
    return !i || (i.complete && i.naturalWidth > 0); });
}
(function check() { if (ready()) done(performance.now() - start); else requestAnimationFrame(check); })();"""
SWEEP = """const done = arguments[arguments.length - 1], frames = [];
window.scrollTo(0, 0);
let last = performance.now();
(function step() {
  const now = performance.now(); frames.push(now - last); last = now;
  if (window.scrollY + window.innerHeight >= document.body.scrollHeight - 2) {
    const kept = frames.slice(1).sort((a, b) => a - b);
    done([frames.length, kept[Math.floor(kept.length / 2)], kept[kept.length - 1]]); return;
  }
  window.scrollBy(0, window.innerHeight); requestAnimationFrame(step);
})();"""
SLIDER = """const done = arguments[arguments.length - 1];
const slider = document.getElementById("threshold-slider"), start = performance.now();
slider.value = Math.floor(slider.max / 3); slider.dispatchEvent(new Event("input"));
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - start)));"""


def picture(rng: np.random.Generator, defective: bool) -> Image.Image:
    """A 160 px picture: a smooth gradient, with a dark blob for a defective image."""
    base = np.linspace(90, 200, 160, dtype=np.float32)[None, :, None] + rng.normal(0, 4, (160, 160, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    if defective:
        x, y, r = rng.integers(20, 140, 2).tolist() + [int(rng.integers(6, 18))]
        ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), fill=(40, 30, 30))
    return image


def fake_run(folder: Path, count: int, seed: int = 0) -> None:
    """scores.csv, metrics.json and a picture per image: what the report reads of a test run."""
    rng = np.random.default_rng(seed)
    rows, flagged = [], {"good": [0, 0], "defective": [0, 0]}
    for index in range(count):
        kind = KINDS[0] if index % 3 == 0 else KINDS[1 + index % 4]
        label = int(kind != "good")
        score = float(rng.normal(0.6, 0.1) if label else rng.normal(0.3, 0.06))
        path = folder / "test" / kind / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(rng, bool(label)).save(path, quality=85)
        decision = "defective" if score >= THRESHOLD else "good"
        flagged["defective" if label else "good"][0] += decision == "defective"
        flagged["defective" if label else "good"][1] += 1
        rows.append([str(path), f"{score:.6g}", decision, "0", str(label), ""])
    with open(folder / runfiles.scores_file(), "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "score", "decision", "defect_area", "label", "error"], *rows])
    at = {"threshold": THRESHOLD, **{f"{k}_flagged": f"{v[0]}/{v[1]}" for k, v in flagged.items()}}
    (folder / runfiles.METRICS).write_text(json.dumps({
        "category": "fake", "backbone": "none", "metrics": {"image_auroc": None}, "at_threshold": at,
        "threshold": {"image": {"value": THRESHOLD, "source": "fixed (fake run)"}}}))


def driver():
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium_binary())
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--allow-file-access-from-files"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    chrome.set_script_timeout(120)
    return chrome


def measure(page: Path, repeats: int) -> dict[str, float]:
    """Median over repeats, each in a fresh browser: interactive, bottom, sweep frames, slider (ms)."""
    found: dict[str, list[float]] = {}
    for _ in range(repeats):
        chrome = driver()
        try:
            chrome.get(page.resolve().as_uri())
            while chrome.execute_script("return document.body.dataset.ready") != "1":
                time.sleep(0.01)
            values = {"interactive": float(chrome.execute_script("return document.body.dataset.readyMs"))}
            if chrome.execute_script("return !!document.getElementById('gallery')"):
                values["bottom"] = chrome.execute_async_script(BOTTOM)
                frames = chrome.execute_async_script(SWEEP)
                values["sweep frames"], values["median frame"], values["longest frame"] = frames
                values["slider"] = chrome.execute_async_script(SLIDER)
        finally:
            chrome.quit()
        for key, value in values.items():
            found.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in found.items()}


def sizes(page: Path) -> str:
    thumbs = [p.stat().st_size for p in (page.parent / runfiles.REPORT_FILES).glob("*")]
    return (f"report.html {page.stat().st_size / 1024:.0f} KiB, {runfiles.REPORT_FILES}/ {len(thumbs)} files "
            f"{sum(thumbs) / 2**20:.1f} MiB")


def report(name: str, page: Path, repeats: int) -> None:
    figures = measure(page, repeats)
    text = ", ".join(f"{key} {value:.0f}" + ("" if key == "sweep frames" else " ms")
                     for key, value in figures.items())
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{name}: {text}; {sizes(page)}; load average after: {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images of the fake run (default 5000)")
    parser.add_argument("--open", nargs="+", type=Path, default=[], help="measure these report.html instead")
    parser.add_argument("--repeats", type=int, default=3, help="fresh browsers per page (median)")
    parser.add_argument("--keep", type=Path, help="make the fake run here (default: a temporary folder)")
    args = parser.parse_args()
    print(machine_line(("torch", "selenium")), f"| {Path(chromium_binary()).name}")
    for page in args.open:
        report(str(page), page, args.repeats)
    if args.open:
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cfa-report-page-"))
    start = time.perf_counter()
    fake_run(folder, args.images)
    print(f"fake run of {args.images} images in {folder} ({time.perf_counter() - start:.1f} s)")
    for label in ("first report (thumbnails drawn)", "second report (thumbnails reused)"):
        start = time.perf_counter()
        page = write_report(folder)
        print(f"{label}: {time.perf_counter() - start:.1f} s")
    report(f"{args.images} images", page, args.repeats)


if __name__ == "__main__":
    main()
