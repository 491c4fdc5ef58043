"""Does synthetic validation rank models as the test set does? A measurement, not a selection on test data.

    python benchmarks/validation.py [--epochs 30] [--every 5] [--backbones mobilenet_v2 efficientnet_lite0]

For the shared real sets (grid subset, hazelnut; skipped when ../shared/data is absent) and the demo's
two synthetic categories, each backbone is trained with data.validation=synthetic. At every validation
epoch the test split is scored too, here only, to measure: the Spearman rank correlation between
validation AUPRO and test AUPRO over all (backbone, epoch) points of a dataset, and the test metrics of
the point that validation alone selects (best validation AUPRO) against the default (mobilenet_v2, final
epoch of the fixed schedule).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_line
from scipy.stats import spearmanr

from cfa_anomaly.config import Config, load_config
from cfa_anomaly.data.synthetic import generate_dataset
from cfa_anomaly.evaluate import compute_test_metrics, predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.model.factory import build_model, resolve_device
from cfa_anomaly.data.dataset import image_loader
from cfa_anomaly.pipeline import _validation_tracker
from cfa_anomaly.run_data import split_loader, training_split
from cfa_anomaly.train import fit

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_BACKBONE = "mobilenet_v2"


def datasets(workdir: Path) -> dict[str, list[str]]:
    """name -> config overrides (data location and the category's YAML when there is one)."""
    found: dict[str, list[str]] = {}
    for name, root in (("grid", SHARED / "mvtec_ad"), ("hazelnut", SHARED / "hazelnut_toy")):
        if (root / name).is_dir():
            found[name] = [f"data.root={root}", f"data.category={name}"]
    for kind in ("texture", "object"):
        category = f"synthetic_{kind}"
        if not (workdir / category).is_dir():
            generate_dataset(workdir, category=category, kind=kind, seed=0)
        found[category] = [f"data.root={workdir}", f"data.category={category}", "data.holdout_fraction=0.2"]
    return found


class TestScoring:
    """Wraps the validation tracker: at each validation epoch, also the test metrics (measurement only)."""

    def __init__(self, tracker: Any, cfg: Config, model: Any) -> None:
        self.tracker, self.cfg, self.model = tracker, cfg, model
        self.test: dict[int, dict[str, float | None]] = {}

    def __call__(self, epoch: int, loss: float) -> None:
        seen = len(self.tracker.history)
        self.tracker(epoch, loss)
        if len(self.tracker.history) > seen:
            self.model.eval()
            predictions = predict(Predictor.from_model(self.model, self.cfg, None), split_loader(self.cfg, "test"))
            self.test[epoch] = compute_test_metrics(predictions)
            self.model.descriptor.train()

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)


def run(name: str, overrides: list[str], backbone: str, epochs: int, every: int) -> list[dict[str, Any]]:
    """(epoch, validation metrics, test metrics) at every validation epoch of one training."""
    config_path = REPO / "configs/anomaly/unsupervised/cfa" / f"{name}.yaml"
    cfg = load_config(config_path if config_path.is_file() else None,
                      [*overrides, f"model.backbone={backbone}", f"train.epochs={epochs}", "train.device=cpu",
                       "data.validation=synthetic", f"train.validate_every={every}"])
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, device)
    train, holdout = training_split(cfg)
    scoring = TestScoring(_validation_tracker(model, holdout, cfg), cfg, model)
    fit(model, image_loader(train, cfg), cfg, device, observer=scoring)
    return [{"backbone": backbone, "epoch": h["epoch"], "validation": h, "test": scoring.test[h["epoch"]]}
            for h in scoring.tracker.history]


def report(name: str, points: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    val = [p["validation"]["aupro"] for p in points]
    test = [p["test"]["aupro"] for p in points]
    rho = spearmanr(val, test).statistic if len(set(val)) > 1 and len(set(test)) > 1 else float("nan")
    chosen = max(points, key=lambda p: p["validation"]["aupro"])
    default = next(p for p in points if p["backbone"] == DEFAULT_BACKBONE and p["epoch"] == epochs)
    return {"dataset": name, "points": len(points), "spearman_val_test_aupro": rho,
            "selected": f"{chosen['backbone']} epoch {chosen['epoch']}", "selected_test": chosen["test"],
            "default_test": default["test"]}


def fmt(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--backbones", nargs="+", default=[DEFAULT_BACKBONE, "efficientnet_lite0"])
    parser.add_argument("--only", nargs="+", help="dataset names to run (default: all found)")
    parser.add_argument("--json", type=Path, help="also write every point here")
    args = parser.parse_args()
    print(machine_line())
    rows, everything = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, overrides in datasets(Path(workdir)).items():
            if args.only and name not in args.only:
                continue
            points = [p for backbone in args.backbones for p in run(name, overrides, backbone, args.epochs, args.every)]
            everything[name] = points
            rows.append(report(name, points, args.epochs))
    print("| dataset | points | Spearman (val AUPRO, test AUPRO) | selected by validation | test image AUROC / "
          "pixel AUROC / AUPRO, selected | same, default (mobilenet_v2, final epoch) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sel, dft = r["selected_test"], r["default_test"]
        print(f"| {r['dataset']} | {r['points']} | {fmt(r['spearman_val_test_aupro'])} | {r['selected']} | "
              f"{fmt(sel['image_auroc'])} / {fmt(sel['pixel_auroc'])} / {fmt(sel['aupro'])} | "
              f"{fmt(dft['image_auroc'])} / {fmt(dft['pixel_auroc'])} / {fmt(dft['aupro'])} |")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
