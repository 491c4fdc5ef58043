"""Speed and accuracy of the plain float32 path against the fast paths (not a test).

    python benchmarks/speed.py                       # timing (wide_resnet50_2, random weights) + accuracy
    python benchmarks/speed.py --images 209 --epochs 1 --repeats 1 --skip-accuracy   # a 209-image category
    python benchmarks/speed.py --profile mixed       # where the time goes (torch.profiler tables)
    python benchmarks/speed.py --neighbours          # how often the bfloat16 search misses a neighbour
    python benchmarks/speed.py --neighbours --neighbours-precision int8-search   # the int8 search's
    python benchmarks/speed.py --device cuda         # the same on a GPU (peak GPU memory added)

Variants (VARIANTS): plain (float32, maps resized before the descriptor: the reference), float32, mixed,
bfloat16, int8-search and projected-search (each with the descriptor applied per backbone layer, the
default), and some opt-in and diagnostic ones (mixed-bf16-last, mixed-eager, mixed-compiled).
Timing: each variant runs in its own process (so peak memory is its own) on the same seeded random
images: the one-time feature pass and memory-bank initialisation, ms per image per training epoch, and
inference images/s (backbone through smoothed map, decoding excluded); each figure is the best of
--repeats runs, as the speed of a shared machine varies from run to run. Accuracy: train + test on the
shared real data (../shared/data) with an offline backbone with each variant; metric deltas against
plain and the correlation of the score maps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_line

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cfa_anomaly.config import load_config  # noqa: E402
from cfa_anomaly.model.factory import build_model  # noqa: E402
from cfa_anomaly.runtime import synchronize  # noqa: E402
from cfa_anomaly.train import fit  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
CONFIGS = REPO / "configs" / "anomaly" / "unsupervised" / "cfa"
REAL_SETS = {"grid": (SHARED / "mvtec_ad", "grid"), "hazelnut": (SHARED / "hazelnut_toy", "hazelnut")}
# The paths compared: name -> config overrides. "plain" is the reference: float32, and the maps resized
# and concatenated before the descriptor (the literal order); the others apply it per layer.
VARIANTS = {
    "plain": ["model.precision=float32", "model.per_layer_projection=false", "model.compile=off"],
    "float32": ["model.precision=float32"],
    "mixed": ["model.precision=mixed"],
    "mixed-bf16-last": ["model.precision=mixed", "model.last_stage_bfloat16=true"],  # opt-in: see README
    "int8-search": ["model.precision=int8-search"],  # auto's choices on CPUs where bfloat16 does not pay
    "projected-search": ["model.precision=projected-search"],  # ... exact: the certified search
    "bfloat16": ["model.precision=bfloat16"],
    "mixed-eager": ["model.precision=mixed", "model.compile=off"],  # mixed without torch.compile
    "mixed-compiled": ["model.precision=mixed", "model.compile=on"],  # compiled at any size (small backbones)
}
REFERENCE = "plain"


def fast_variants(chosen: list[str] | None = None) -> list[str]:
    return [name for name in (chosen or VARIANTS) if name != REFERENCE]


def timing_run(variant: str, backbone: str, images: int, epochs: int, batch: int, device_name: str) -> dict:
    """One process: feature pass, training epochs and inference on seeded random images."""
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=false", *VARIANTS[variant],
                             f"train.epochs={epochs}", f"data.batch_size={batch}",
                             f"train.device={device_name}"])
    device = torch.device(device_name)
    model = build_model(cfg, device)
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(images, 3, cfg.data.crop, cfg.data.crop, generator=generator)
    loader = [{"image": data[i: i + batch]} for i in range(0, images, batch)]
    result = fit(model, loader, cfg, device)
    model.eval()
    data = data.to(device)  # decoding and the transfer to the device are not timed
    with torch.inference_mode():
        start = time.perf_counter()
        model(data[:batch])  # warm-up (and torch.compile's one-time cost for scoring, model.compile)
        synchronize(device)
        first_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, images, batch):
            model(data[i: i + batch])
        synchronize(device)
        infer_seconds = time.perf_counter() - start
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "variant": variant,
        "feature_ms_per_image": 1000 * result.feature_seconds / images,
        "bank_ms_per_image": 1000 * result.bank_seconds / images,
        "compile_seconds": result.compile_seconds,
        "first_inference_batch_seconds": first_seconds,
        "train_ms_per_image_epoch": 1000 * result.train_seconds / (images * max(epochs, 1)),
        "inference_images_per_second": images / infer_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": gpu_peak,
    }


def profile_run(variant: str, backbone: str, batch: int) -> None:
    """torch.profiler tables, by operator and input shape: two training steps on cached features, then one
    inference batch."""
    from torch.profiler import profile

    from cfa_anomaly.train import cache_features, init_memory_bank, select_images

    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=false", *VARIANTS[variant],
                             "train.device=cpu"])
    model = build_model(cfg, torch.device("cpu"))
    images = torch.rand(2 * batch, 3, cfg.data.crop, cfg.data.crop, generator=torch.Generator().manual_seed(0))
    loader = [{"image": images[i: i + batch]} for i in range(0, len(images), batch)]
    cached = cache_features(model, loader, torch.device("cpu"))
    init_memory_bank(model, cached, batch, cfg)
    model.warm_up(select_images(cached, slice(0, batch)))  # model.compile: compiled before profiling
    optimizer = torch.optim.AdamW(list(model.descriptor.parameters()) + list(model.loss_fn.parameters()))

    def step(part: list[torch.Tensor]) -> None:
        optimizer.zero_grad()
        model.loss(part).backward()
        optimizer.step()

    step(select_images(cached, slice(0, batch)))  # warm-up
    with profile(record_shapes=True) as training:
        for i in range(0, len(images), batch):
            step(select_images(cached, slice(i, i + batch)))
    print(f"training, {len(images)} images (per image: divide by {len(images)})")
    print(shape_table(training))
    model.eval()
    with torch.inference_mode():
        model(images[:batch])  # warm-up
        with profile(record_shapes=True) as inference:
            model(images[:batch])
    print(f"inference, {batch} images")
    print(shape_table(inference))


def shape_table(profiled) -> str:
    """The profile's 25 largest (operator, input shapes) by self time."""
    averages = profiled.key_averages(group_by_input_shape=True)
    return averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=30,
                          max_shapes_column_width=70)


def neighbour_run(name: str, backbone: str, epochs: int, precision: str = "mixed") -> dict:
    """Train on a real set, then: how often does the bfloat16 (mixed) or int8 (int8-search) search miss a
    true nearest centre?

    For every test patch, the k nearest centres returned by the model's search (k = K and K + J) are
    compared with those of an exact float64 distance matrix of the same features (described_rows: the
    features the fused step computes, bfloat16-rounded in mixed precision).
    """
    from cfa_anomaly.data.dataset import AnomalyDataset, make_loader
    from cfa_anomaly.data.samples import make_samples
    from cfa_anomaly.model.matching import describe_and_match, described_rows
    from cfa_anomaly.checkpoint import restore_model
    from cfa_anomaly.pipeline import train_and_test

    root, category = REAL_SETS[name]
    cfg = load_config(None, [f"data.root={root}", f"data.category={category}", f"model.backbone={backbone}",
                             f"model.precision={precision}", f"train.epochs={epochs}", "train.device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        train_and_test(cfg, Path(tmp))
        model, cfg, _ = restore_model(Path(tmp) / "checkpoint.pt", "cpu")
    test = make_samples(root, category, "test")
    counts = {k: [0, 0.0] for k in (cfg.model.K, cfg.model.K + cfg.model.J)}
    patches = 0
    with torch.no_grad():
        for batch in make_loader(AnomalyDataset(test, cfg.data.resize, cfg.data.crop), cfg.data.batch_size):
            aggregated = model.aggregate(batch["image"])
            bank = model.prepared_bank()
            features = described_rows(model.descriptor.projection, aggregated, bank.product_dtype).double()
            exact = torch.cdist(features, model.memory_bank.double()).square()
            patches += features.shape[0]
            for k in counts:
                found, _ = describe_and_match(model.descriptor.projection, aggregated, bank, k)
                best = exact.topk(k, dim=1, largest=False).values
                excess = ((found.double() - best) / best.clamp_min(1e-12)).max(dim=1).values
                counts[k][0] += int((excess > 1e-3).sum())
                counts[k][1] = max(counts[k][1], float(excess.max()))
    return {"data": name, "backbone": backbone, "patches": patches,
            "missed": {k: (missed / patches, worst) for k, (missed, worst) in counts.items()}}


def accuracy_run(name: str, backbone: str, epochs: int, device_name: str,
                 variants: list[str] | None = None) -> dict:
    """Train + test one real set with plain and each variant (default: all), from the category's config
    (configs/anomaly/unsupervised/cfa); metric deltas and map correlation against plain."""
    from cfa_anomaly.pipeline import train_and_test

    root, category = REAL_SETS[name]
    out: dict = {"data": name, "backbone": backbone}
    maps = {}
    chosen = [REFERENCE, *fast_variants(variants)]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in chosen:
            cfg = load_config(CONFIGS / f"{category}.yaml",
                              [f"data.root={root}", f"data.category={category}", f"model.backbone={backbone}",
                               *VARIANTS[variant], f"train.epochs={epochs}", f"train.device={device_name}"])
            folder = Path(tmp) / variant
            folder.mkdir()
            report = train_and_test(cfg, folder)
            out[variant] = report["metrics"]
            out[f"{variant}_train_seconds"] = report["train"]["train_seconds"]
            maps[variant] = np.load(folder / "maps.npz")["maps"].astype(np.float64)
    plain = out[REFERENCE]
    for variant in fast_variants(chosen):
        out[f"{variant}_max_metric_delta"] = max(abs(out[variant][k] - plain[k]) for k in plain
                                                 if plain[k] is not None)
        correlation = np.corrcoef(maps[REFERENCE].ravel(), maps[variant].ravel())[0, 1]
        out[f"{variant}_map_correlation"] = float(correlation)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per variant; the best is shown")
    parser.add_argument("--accuracy-backbone", default="mobilenet_v2")
    parser.add_argument("--accuracy-epochs", type=int, default=30)
    parser.add_argument("--variants", type=lambda text: text.split(","), default=list(VARIANTS),
                        help="comma-separated variants to time and compare (accuracy always adds plain)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--profile", choices=VARIANTS, help="print where the time of one variant goes")
    parser.add_argument("--neighbours", action="store_true",
                        help="how often the bfloat16 search misses a true nearest centre (real data)")
    parser.add_argument("--neighbours-precision", default="mixed", choices=("mixed", "int8-search"),
                        help="the search --neighbours measures: bfloat16 (mixed) or int8 (int8-search)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (timing and accuracy runs)")
    parser.add_argument("--single", choices=VARIANTS, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}: use some of {', '.join(VARIANTS)}")
    if args.profile:
        profile_run(args.profile, args.backbone, args.batch)
        return
    if args.neighbours:
        for name, backbone in (("grid", "mobilenet_v2"), ("hazelnut", "efficientnet_lite0")):
            result = neighbour_run(name, backbone, args.accuracy_epochs, args.neighbours_precision)
            for k, (share, worst) in result["missed"].items():
                print(f"{name:9} {backbone:18} top-{k}: a true neighbour missed in {100 * share:.3f}% of "
                      f"{result['patches']} test patches; worst distance excess {100 * worst:.2f}%")
        return
    if args.single:
        result = timing_run(args.single, args.backbone, args.images, args.epochs, args.batch, args.device)
        print(json.dumps(result))
        return

    print(f"{machine_line()}  device {device_description(args.device)}")
    if not args.skip_timing:
        print_timing(args)
    if args.skip_accuracy:
        return
    if not SHARED.is_dir():
        print(f"accuracy: skipped, {SHARED} is absent")
        return
    print(f"accuracy: {args.accuracy_backbone} (ImageNet), {args.accuracy_epochs} epochs, variants vs plain")
    for name in REAL_SETS:
        result = accuracy_run(name, args.accuracy_backbone, args.accuracy_epochs, args.device, args.variants)
        for variant in (REFERENCE, *fast_variants(args.variants)):
            metrics = " ".join(f"{k}={v:.4f}" for k, v in result[variant].items() if v is not None)
            print(f"  {name:9} {variant:9} {metrics}  train {result[f'{variant}_train_seconds']:.1f}s")
        for variant in fast_variants(args.variants):
            print(f"  {name:9} {variant:9} max metric delta {result[f'{variant}_max_metric_delta']:.4f}, "
                  f"map correlation {result[f'{variant}_map_correlation']:.5f}")


def device_description(name: str) -> str:
    return torch.cuda.get_device_name(torch.device(name)) if name.startswith("cuda") else "cpu"


def print_timing(args: argparse.Namespace) -> None:
    print(f"timing: {args.backbone} (random weights), {args.images} images 224 px, {args.epochs} epochs, "
          f"batch {args.batch}, best of {args.repeats} runs")
    runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for _ in range(args.repeats):  # the variants take turns, so that a slow spell of a shared machine
        for variant in args.variants:  # hits them alike; each figure is the variant's best run
            command = [sys.executable, __file__, "--single", variant, "--backbone", args.backbone,
                       "--images", str(args.images), "--epochs", str(args.epochs), "--batch", str(args.batch),
                       "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = {variant: {key: (max if key == "inference_images_per_second" else min)(run[key] for run in done_runs)
                      for key in done_runs[0] if key != "variant" and done_runs[0][key] is not None}
            for variant, done_runs in runs.items()}
    base = REFERENCE if REFERENCE in rows else args.variants[0]  # speed-ups are relative to it
    gpu = "peak_gpu_gib" in rows[base]
    print(f"{'':11} {'feature ms/img':>15} {'bank ms/img':>12} {'compile s':>10} {'train ms/img/epoch':>19} "
          f"{'1st infer s':>12} {'infer img/s':>12} {'peak RSS GiB':>13}"
          + (f" {'peak GPU GiB':>13}" if gpu else ""))
    for variant, row in rows.items():
        print(f"{variant:11} {row['feature_ms_per_image']:15.1f} {row['bank_ms_per_image']:12.1f} "
              f"{row['compile_seconds']:10.1f} {row['train_ms_per_image_epoch']:19.1f} "
              f"{row['first_inference_batch_seconds']:12.2f} "
              f"{row['inference_images_per_second']:12.2f} {row['peak_rss_gib']:13.2f}"
              + (f" {row['peak_gpu_gib']:13.2f}" if gpu else ""))
    slow = rows[base]
    for variant in (name for name in args.variants if name != base):
        fast = rows[variant]
        print(f"speed-up of {variant} over {base}: feature pass x"
              f"{slow['feature_ms_per_image'] / fast['feature_ms_per_image']:.2f}, training x"
              f"{slow['train_ms_per_image_epoch'] / fast['train_ms_per_image_epoch']:.2f}, inference x"
              f"{fast['inference_images_per_second'] / slow['inference_images_per_second']:.2f}")


if __name__ == "__main__":
    main()
