"""Label-free validation: synthetic defects painted onto held-out normal images, scored during training.

Choosing epochs, input size or backbone by test metrics flatters them. Here the held-out normal images
(the threshold's split, never trained on and never the test set) each give one clean validation image
and one copy per painted defect kind (data/synthetic.py paint_defect: scratch, hole, stain, missing
piece, a pasted patch of another held-out image), with exact masks, seeded. Every train.validate_every
epochs the model scores them; image AUROC, pixel AUROC and AUPRO go into train.json, and with
train.select=best-validation the state of the best validation AUPRO is kept.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfa_anomaly import metrics
from cfa_anomaly.config import Config
from cfa_anomaly.data.images import image_to_tensor, read_rgb, tensor_to_rgb
from cfa_anomaly.data.samples import Sample
from cfa_anomaly.data.synthetic import PAINTED_DEFECTS, paint_defect
from cfa_anomaly.model import CFA
from cfa_anomaly.model.cfa import Layers
from cfa_anomaly.tiling import TileGrid
from cfa_anomaly.train import cache_features, select_images

log = logging.getLogger(__name__)
SELECTION_METRIC = "aupro"


@dataclass
class ValidationSet:
    """M images on the model's input grid with their labels and exact masks."""

    images: torch.Tensor  # (M, 3, s, s) float32 in 0..1, s the model's input size
    labels: np.ndarray  # (M,) 0 clean, 1 painted
    masks: np.ndarray  # (M, crop, crop) bool
    kinds: list[str]  # "good" or the painted defect kind, per image


TILES_PER_IMAGE = 4  # a tiled model's painted set: this many tiles of each held-out image, spread evenly


def model_views(rgb: np.ndarray, cfg: Config) -> list[np.ndarray]:
    """What the model sees of a (crop, crop, 3) image: the image, or with data.tile a few of its tiles."""
    if not cfg.data.tile:
        return [rgb]
    grid = TileGrid(cfg.data.crop, cfg.data.tile, cfg.data.tile_overlap)
    tiles = grid.cut(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    chosen = np.unique(np.linspace(0, len(tiles) - 1, min(TILES_PER_IMAGE, len(tiles))).round().astype(int))
    return [tiles[i].permute(1, 2, 0).numpy() for i in chosen]


def synthetic_validation_set(holdout: list[Sample], cfg: Config) -> ValidationSet:
    """Each held-out normal image (a tiled model: a few of its tiles), clean and with one painted defect of
    every kind (seeded by train.seed), on the model's input grid."""
    data = cfg.data
    crops = [view for s in holdout for view in model_views(
        tensor_to_rgb(image_to_tensor(read_rgb(s.image), data.resize, data.crop, data.keep_aspect)), cfg)]
    images, labels, masks, kinds = [], [], [], []
    for index, rgb in enumerate(crops):
        images.append(rgb)
        labels.append(0)
        masks.append(np.zeros(rgb.shape[:2], bool))
        kinds.append("good")
        donor = crops[(index + 1) % len(crops)]
        for number, defect in enumerate(PAINTED_DEFECTS):
            rng = np.random.default_rng([cfg.train.seed, index, number])
            painted, mask = paint_defect(rgb, defect, rng, donor)
            images.append(painted)
            labels.append(1)
            masks.append(mask)
            kinds.append(defect)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return ValidationSet(tensor, np.asarray(labels), np.stack(masks), kinds)


def score_validation(model: CFA, cached: Layers, validation: ValidationSet,
                     batch_size: int) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AUPRO of the model on the validation set (its backbone maps cached)."""
    size = tuple(validation.images.shape[-2:])
    maps, scores = [], []
    with torch.no_grad():
        for start in range(0, len(validation.labels), batch_size):
            layers = select_images(cached, slice(start, start + batch_size))
            batch_maps, batch_scores = model.score_aggregated(layers, size)
            maps.append(batch_maps.float().cpu().numpy())
            scores.append(batch_scores.float().cpu().numpy())
    all_maps, all_scores = np.concatenate(maps), np.concatenate(scores)
    return {"image_auroc": metrics.image_auroc(validation.labels, all_scores),
            "pixel_auroc": metrics.pixel_auroc(validation.masks, all_maps),
            "aupro": metrics.aupro(validation.masks, all_maps)}


@dataclass
class ValidationTracker:
    """Scores the model after every `every` epochs (and the last); keeps the best state when selecting."""

    model: CFA
    validation: ValidationSet
    every: int
    epochs: int
    select_best: bool
    batch_size: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"epoch", "aupro", "state"} of the best validation AUPRO so far
    _cached: Layers | None = None

    def __call__(self, epoch: int, loss: float) -> None:
        """After epoch `epoch` (1-based) of training."""
        if epoch % self.every and epoch != self.epochs:
            return
        if self._cached is None:  # the backbone is frozen: its maps of the validation images never change
            images = self.validation.images
            step = self.batch_size
            batches = [{"image": images[i: i + step]} for i in range(0, len(images), step)]
            self._cached = cache_features(self.model, batches, self.model.memory_bank.device)
        was_training = self.model.descriptor.training
        self.model.eval()
        scores = score_validation(self.model, self._cached, self.validation, self.batch_size)
        self.model.descriptor.train(was_training)
        self.history.append({"epoch": epoch, "loss": round(loss, 6),
                             **{k: None if v is None else round(v, 5) for k, v in scores.items()}})
        log.debug("epoch %d validation: %s", epoch, scores)
        value = scores[SELECTION_METRIC]
        better = value is not None and (self.best is None or value > self.best[SELECTION_METRIC])
        if self.select_best and better:
            state = {k: v.detach().cpu().clone() for k, v in self.model.learned_state().items()}
            self.best = {"epoch": epoch, SELECTION_METRIC: value, "state": state}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on validating and selecting as an uninterrupted one would."""
        return {"history": copy.deepcopy(self.history), "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.best = list(state.get("history", [])), state.get("best")

    def summary(self) -> dict[str, Any]:
        """For train.json / metrics.json: the history and which epoch's state the checkpoint holds, and
        why."""
        if self.select_best and self.best is not None:
            best = self.best[SELECTION_METRIC]
            selected = {"epoch": self.best["epoch"],
                        "reason": f"best validation {SELECTION_METRIC} ({best:.4f}) on synthetic defects "
                                  "painted onto held-out normal images; test labels unused"}
        else:
            selected = {"epoch": self.epochs, "reason": "train.select = final: the last epoch's state"}
        return {"images": len(self.validation.labels), "defective": int(self.validation.labels.sum()),
                "kinds": list(PAINTED_DEFECTS), "history": self.history, "selected": selected}


def plot_validation(path: Path, history: list[dict[str, Any]], selected_epoch: int, title: str) -> None:
    """validation.png: the validation metrics per epoch, the selected epoch marked."""
    from cfa_anomaly import viz

    viz.plot_curves(path, [h["epoch"] for h in history],
                    {key: [h[key] for h in history] for key in ("image_auroc", "pixel_auroc", "aupro")},
                    marker=selected_epoch, title=title, xlabel="epoch",
                    ylabel="validation (synthetic defects)")
