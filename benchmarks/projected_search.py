"""The certified search of model.precision=projected-search against the float32 search (not a test).

    python benchmarks/projected_search.py --wide   # wide_resnet50_2, random weights: shares and search times
    python benchmarks/projected_search.py --real   # trained mobilenet_v2, efficientnet_lite0 on the real sets

For each set of features: the projection's d, the share of rows the first candidates certify, the share
the widened candidates do not settle (those run the full float32 product) and the search's time (one call
on a 2-image batch, k = K + J = 6 as in training and k = 3 as in scoring), certified against the full
float32 product, timed alternately, best of --repeats; --real also scores the test images rotated into the
bank's axes against the float32 search.

--wide: the benchmarks' speed convention (wide_resnet50_2 with random weights, 16 seeded random 224 px
images): the training images' features at the start, and the share in every training step of 2 epochs of
projected-search training (its descriptor moves the features away from the bank's subspace). Random-weight
features are not real features. --real: models trained 30 epochs on the shared grid (mobilenet_v2) and
hazelnut (efficientnet_lite0) sets, their test features, and the share in every training step. Their D (152,
176) is too narrow for the projection to pay, so the mode keeps the full product for them; here it is made
anyway (MAX_COST and RESIDUAL_LIMIT lifted) to measure how tightly the bound fits real features.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import machine_line
from speed import CONFIGS, REAL_SETS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cfa_anomaly.config import load_config
from cfa_anomaly.model import CFA, projection, search
from cfa_anomaly.model.distances import squared_norms
from cfa_anomaly.model.factory import build_model
from cfa_anomaly.model.matching import described_rows
from cfa_anomaly.train import cache_features, fit

SHARES: list[tuple[float, float]] = []  # each certified search's shares of certified and full rows, in order


def counted(*args, **kwargs) -> search.Found:
    found = CERTIFIED(*args, **kwargs)
    SHARES.append((found.certified.float().mean().item(), found.full.float().mean().item()))
    return found


CERTIFIED, search.certified_nearest = search.certified_nearest, counted  # every certified search counted


def misses(points: torch.Tensor, centres: torch.Tensor, found: torch.Tensor) -> int:
    """Rows whose k-th returned centre is farther (float64, by more than 1e-6) than the true k-th."""
    true = torch.cdist(points.double(), centres.double()).square_()
    best = true.topk(found.shape[1], dim=1, largest=False).values[:, -1]
    return int((true.gather(1, found)[:, -1] > best * (1 + 1e-6)).sum())


def compare(label: str, model, points: torch.Tensor, repeats: int) -> None:
    """Share certified and search time of the model's bank on these (N, D) features (2 images' rows timed)."""
    bank = model.prepared_bank()
    centred = points - bank.offset
    norms = squared_norms(centred)
    rows = min(len(points), 2 * bank.centred.shape[0])  # 2 images' patches: one centre per position
    line = f"{label}: D {bank.centred.shape[1]}, M {bank.centred.shape[0]}, d {bank.projection.dimension}"
    for k in (6, 3):
        found = CERTIFIED(centred, norms, bank, k)
        exact = search.exact_nearest(centred, norms, bank, k)
        same = (found.indices == exact.indices).all(1).float().mean().item()
        wrong = [misses(centred, bank.centred, result.indices) for result in (found, exact)]
        seconds = {"float32": float("inf"), "certified": float("inf")}
        for _ in range(repeats):
            for name, run in (("float32", search.exact_nearest), ("certified", CERTIFIED)):
                start = time.perf_counter()
                run(centred[:rows], norms[:rows], bank, k)
                seconds[name] = min(seconds[name], time.perf_counter() - start)
        line += (f"\n  k={k}: {100 * found.certified.float().mean():.2f}% of {len(points)} rows certified by "
                 f"the first candidates, {100 * found.full.float().mean():.2f}% searched in full, "
                 f"neighbours equal to the full search's in {100 * same:.2f}% (k-th farther than float64's: "
                 f"{wrong[0]} and {wrong[1]} rows); {rows} rows: float32 "
                 f"{1000 * seconds['float32']:.1f} ms, certified {1000 * seconds['certified']:.1f} ms "
                 f"(x{seconds['float32'] / seconds['certified']:.2f})")
    print(line, flush=True)


def training_shares(label: str) -> None:
    """The shares of every training step so far, by thirds of training, then reset: rows certified by the
    first candidates (mean, least) and rows searched in full (mean, most)."""
    thirds = [SHARES[i * len(SHARES) // 3: (i + 1) * len(SHARES) // 3] for i in range(3)]
    print(f"{label}: {len(SHARES)} steps; by thirds of training, certified share (mean, least) and share "
          "searched in full (mean, most): " + "; ".join(
              f"{statistics.mean(c for c, _ in part):.3f}, {min(c for c, _ in part):.3f} and "
              f"{statistics.mean(f for _, f in part):.3f}, {max(f for _, f in part):.3f}"
              for part in thirds if part), flush=True)
    SHARES.clear()


def wide(repeats: int) -> None:
    cfg = load_config(None, ["model.backbone=wide_resnet50_2", "model.pretrained=false",
                             "model.precision=projected-search", "train.epochs=2", "data.batch_size=4",
                             "train.device=cpu"])
    model = build_model(cfg, torch.device("cpu"))
    images = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    loader = [{"image": images[i: i + 4]} for i in range(0, 16, 4)]
    cached = cache_features(model, loader, torch.device("cpu"))
    untrained = copy.deepcopy(model.descriptor.state_dict())
    fit(model, loader, cfg, torch.device("cpu"))
    training_shares("wide_resnet50_2 (random weights), 2 epochs of projected-search training")
    trained = copy.deepcopy(model.descriptor.state_dict())
    for label, state in (("untrained", untrained), ("after 2 epochs", trained)):
        model.descriptor.load_state_dict(state)
        points = described_rows(model.descriptor.projection, [grid[:2] for grid in cached], torch.float32)
        compare(f"wide_resnet50_2 (random weights), 2 training images' features, {label}", model, points,
                repeats)


def real(name: str, backbone: str, repeats: int) -> None:
    from cfa_anomaly.data.dataset import AnomalyDataset, make_loader
    from cfa_anomaly.data.samples import make_samples

    root, category = REAL_SETS[name]
    cfg = load_config(CONFIGS / f"{category}.yaml", [f"data.root={root}", f"data.category={category}",
                                                    f"model.backbone={backbone}", "train.device=cpu",
                                                    "model.precision=projected-search"])
    model = build_model(cfg, torch.device("cpu"))
    train = make_samples(root, category, "train")
    fit(model, make_loader(AnomalyDataset(train, cfg.data.resize, cfg.data.crop), cfg.data.batch_size), cfg,
        torch.device("cpu"))
    training_shares(f"{name}, {backbone}, {cfg.train.epochs} epochs of projected-search training")
    test = make_samples(root, category, "test")
    test = make_loader(AnomalyDataset(test, cfg.data.resize, cfg.data.crop), 4)
    with torch.no_grad():
        points = torch.cat([described_rows(model.descriptor.projection, model.aggregate(batch["image"]),
                                           torch.float32) for batch in test])
    compare(f"{name}, {backbone}, trained, test features", model, points, repeats)
    rotated_scoring(f"{name}, {backbone}", model, test)
    SHARES.clear()


def rotated_scoring(label: str, model, test) -> None:
    """The test maps as scoring makes them (rotated into the bank's axes, model/rotation.py) against the same
    learned state scored by the float32 search: the largest map difference and the metrics of both."""
    from cfa_anomaly.metrics import image_auroc, pixel_auroc, pixel_f1_max

    reference = CFA(model.extractor, model.cfg, precision="float32")
    reference.load_learned_state(model.learned_state())
    maps, labels, masks = {"rotated": [], "float32": []}, [], []
    with torch.no_grad():
        for batch in test:
            for key, scorer in (("rotated", model), ("float32", reference)):
                maps[key].append(scorer(batch["image"])[0])
            labels.append(batch["label"])
            masks.append(batch["mask"])
    maps = {key: torch.cat(value).double().numpy() for key, value in maps.items()}
    labels, masks = torch.cat(labels).numpy(), torch.cat(masks).numpy()
    largest = abs(maps["rotated"] - maps["float32"]).max() / abs(maps["float32"]).max()
    metrics = {key: (image_auroc(labels, value.reshape(len(value), -1).max(1)), pixel_auroc(masks, value),
                     pixel_f1_max(masks, value)) for key, value in maps.items()}
    print(f"{label}, scoring rotated into the bank's axes against the float32 search: largest map difference "
          f"{largest:.2e} of the largest score; image AUROC, pixel AUROC, pixel F1-max "
          + "; ".join(f"{key} " + ", ".join(f"{v:.6f}" for v in values) for key, values in metrics.items()),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wide", action="store_true")
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_line())
    if args.wide:
        wide(args.repeats)
    if args.real:
        projection.MAX_COST, projection.RESIDUAL_LIMIT = 1.0, 1.0  # a projection even for narrow features
        for name, backbone in (("grid", "mobilenet_v2"), ("hazelnut", "efficientnet_lite0")):
            real(name, backbone, args.repeats)


if __name__ == "__main__":
    main()
