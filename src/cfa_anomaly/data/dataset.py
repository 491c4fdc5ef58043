"""A torch Dataset over a sample index: image in 0..1, mask, label and path, all with one geometry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cfa_anomaly.config import Config
from cfa_anomaly.data.images import check_same_size, image_to_tensor, mask_to_tensor, read_mask, read_rgb
from cfa_anomaly.data.samples import Sample
from cfa_anomaly.tiling import TileGrid


class AnomalyDataset(Dataset):
    """Items: {"image": (3,S,S) float 0..1, "mask": (S,S) bool, "mask_known": bool, "label": int, "path": str,
    "defect_type": str}.

    mask_known is False for a defective image without a mask; its "mask" is then an all-False placeholder,
    not ground truth.
    """

    def __init__(self, samples: Sequence[Sample], resize: int, crop: int, keep_aspect: bool = False) -> None:
        self.samples = list(samples)
        self.resize = resize
        self.crop = crop
        self.keep_aspect = keep_aspect  # resize the short side (data.keep_aspect), not squash to a square

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rgb = read_rgb(sample.image)
        if sample.mask is not None:
            mask = read_mask(sample.mask)
            check_same_size(mask, sample.mask, rgb, sample.image)
        else:
            mask = np.zeros(rgb.shape[:2], dtype=bool)
        return {
            "image": image_to_tensor(rgb, self.resize, self.crop, self.keep_aspect),
            "mask": mask_to_tensor(mask, self.resize, self.crop, self.keep_aspect),
            "mask_known": sample.mask_known,
            "label": sample.label,
            "path": str(sample.image),
            "defect_type": sample.defect_type,
        }


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Deterministic order (no shuffling is needed: features are cached and batches re-drawn per epoch)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


class TiledDataset(Dataset):
    """Every tile of every image of `images` (image by image, tiling.TileGrid.cut's order): the training
    items of a tiled model. Items: {"image": (3, tile, tile), "path": str}; the last image's tiles are kept,
    so in order each image is read once."""

    def __init__(self, images: AnomalyDataset, grid: TileGrid) -> None:
        self.images = images
        self.grid = grid
        self._cached: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.images) * self.grid.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, tile_index = divmod(index, self.grid.count)
        if self._cached is None or self._cached[0] != image_index:
            self._cached = (image_index, self.grid.cut(self.images[image_index]["image"][None]))
        return {"image": self._cached[1][tile_index], "path": str(self.images.samples[image_index].image)}


def image_loader(samples: Sequence[Sample], cfg: Config) -> DataLoader:
    """The samples' whole images with the config's geometry, in order (test, hold-out, scoring)."""
    dataset = AnomalyDataset(samples, cfg.data.resize, cfg.data.crop, cfg.data.keep_aspect)
    return make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers)


def training_loader(samples: Sequence[Sample], cfg: Config) -> DataLoader:
    """The training images, or with data.tile every tile of them (the model's inputs)."""
    images = image_loader(samples, cfg)
    if not cfg.data.tile:
        return images
    grid = TileGrid(cfg.data.crop, cfg.data.tile, cfg.data.tile_overlap)
    return make_loader(TiledDataset(images.dataset, grid), cfg.data.batch_size, cfg.data.num_workers)
