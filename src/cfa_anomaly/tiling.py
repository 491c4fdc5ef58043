"""Tiles for high-resolution images: cut the working image into overlapping squares, score each with the
model, blend their maps back into one map of the working image.

Squashing a 2448 x 2048 image to 224 px turns a 10 px scratch into one pixel. With `data.tile` the image is
resized to `data.resize` (e.g. its own size), cut into `data.tile`-px squares that overlap by
`data.tile_overlap` of their side (the last row and column of tiles end at the image's edge), and each
square is the model's input. Their maps are blended with weights that ramp down across each overlap, so
seams do not show, into one (resize x resize) map; the image score is its maximum.

One model serves all tiles. Its memory bank keeps CFA's meaning, one centre per position of the model's
input, here the mean over all training tiles: the nearest-centre search ignores positions anyway, and the
descriptor adapts the features to the bank as it does for unaligned textures, while a position-free bank
(k-means over every patch of every tile) would cost patches x centres per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a (size x size) working image: `tile`-px squares overlapping by `overlap` of a side."""

    size: int
    tile: int
    overlap: float

    @property
    def stride(self) -> int:
        return max(1, round(self.tile * (1.0 - self.overlap)))

    def starts(self) -> list[int]:
        """Top (or left) edges of the tiles along one side; the last tile ends at the image's edge."""
        last = self.size - self.tile
        starts = list(range(0, last, self.stride)) if last > 0 else []
        return [*starts, last]

    @property
    def count(self) -> int:
        """Tiles per image."""
        return len(self.starts()) ** 2

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, size, size) -> (N * count, C, tile, tile), image by image, rows of tiles top to bottom."""
        if images.shape[-2:] != (self.size, self.size):
            raise ValueError(f"expected images of {self.size} x {self.size} px to tile, got {tuple(images.shape)}")
        starts = self.starts()
        tiles = [images[:, :, top: top + self.tile, left: left + self.tile] for top in starts for left in starts]
        return torch.stack(tiles, dim=1).reshape(-1, images.shape[1], self.tile, self.tile)

    def window(self) -> np.ndarray:
        """(tile, tile) blending weights: 1 inside, ramping down linearly across the overlap at each edge."""
        ramp = self.tile - self.stride
        position = np.arange(self.tile) + 0.5
        if ramp <= 0:
            line = np.ones(self.tile)
        else:
            line = np.minimum(1.0, np.minimum(position, self.tile - position) / ramp)
        return np.outer(line, line).astype(np.float32)

    def stitch(self, maps: np.ndarray) -> np.ndarray:
        """(N * count, tile, tile) tile maps -> (N, size, size) blended maps (cut's order)."""
        starts, window = self.starts(), self.window()
        maps = np.asarray(maps, dtype=np.float32).reshape(-1, len(starts) ** 2, self.tile, self.tile)
        total = np.zeros((maps.shape[0], self.size, self.size), np.float32)
        weight = np.zeros((self.size, self.size), np.float32)
        index = 0
        for top in starts:
            for left in starts:
                total[:, top: top + self.tile, left: left + self.tile] += maps[:, index] * window
                weight[top: top + self.tile, left: left + self.tile] += window
                index += 1
        return total / weight

    def describe(self) -> str:
        side = len(self.starts())
        return (f"cut into {side} x {side} tiles of {self.tile} px overlapping by {self.tile - self.stride} px, "
                "whole image scored")
