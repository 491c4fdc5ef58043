"""Defect-free synthetic images: a woven fabric ("texture") and a machined metal disk ("object"),
and the pixel helpers that the defect painters share."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

Kind = Literal["texture", "object"]
KINDS: tuple[str, ...] = ("texture", "object")

_CROP_FRAC = 224 / 256
_FABRIC_RGB = np.array([196.0, 178.0, 148.0])
_FABRIC_BACKING_RGB = np.array([238.0, 236.0, 230.0])
_METAL_RGB = np.array([176.0, 178.0, 184.0])
_BG_RGB = np.array([62.0, 66.0, 72.0])


def pixel_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` as float arrays of shape (n, n)."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    return y, x


def crop_margin(n: int) -> int:
    """Margin (px) removed on each side by the centre crop (16 for n=256)."""
    return (n - round(n * _CROP_FRAC)) // 2


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Low-frequency noise field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _render_texture(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-weave fabric. Returns (image float HxWx3, 'support' mask = all True)."""
    s = n / 256
    period = 14.0 * s
    y, x = pixel_grid(n)
    u = (x + rng.uniform(0, 2 * period)) / period
    v = (y + rng.uniform(0, 2 * period)) / period
    fu, fv = u % 1.0, v % 1.0
    warp = np.sin(np.pi * fu) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fv))
    weft = np.sin(np.pi * fv) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fu))
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    # fibre streaks run along each thread
    fibre_v = ndimage.gaussian_filter(rng.standard_normal((n, n)), (4 * s, 0.6 * s))
    fibre_h = ndimage.gaussian_filter(rng.standard_normal((n, n)), (0.6 * s, 4 * s))
    fibre = np.where(over, fibre_v, fibre_h) / (fibre_v.std() + 1e-8)
    height = np.where(over, warp, weft)
    shade = 0.5 + 0.5 * height + 0.035 * fibre + 0.02 * _smooth_noise(rng, n, 24 * s)
    colour = _FABRIC_RGB * rng.uniform(0.96, 1.04) + rng.normal(0, 1.0, size=3)
    img = shade[..., None] * colour + rng.normal(0, 3.0, (n, n, 3))
    return img, np.ones((n, n), dtype=bool)


def _render_object(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Machined metal disk on a plain background.

    Returns (image, object coverage in [0, 1], background image)."""
    s = n / 256
    y, x = pixel_grid(n)
    cy, cx = n / 2 - 0.5 + rng.uniform(-4, 4, size=2) * s
    radius = 0.31 * n * rng.uniform(0.985, 1.015)
    theta = np.deg2rad(rng.uniform(-10, 10))
    dy, dx = y - cy, x - cx
    r = np.hypot(dy, dx)
    # background: plain, slightly vignetted
    bg = _BG_RGB * (1.0 - 0.08 * ((r / n) ** 2)[..., None])
    bg = bg + rng.normal(0, 2.0, (n, n, 3))
    # object body: directional light, concentric machining marks, bevelled edge
    rn = r / radius
    light = 0.85 + 0.15 * (-(dx + dy) / (np.sqrt(2) * radius))
    rings = 0.03 * np.sin(2 * np.pi * r / (3.2 * s))
    bevel = np.where(rn > 0.9, 0.72 + 0.3 * ((1 - rn) / 0.1), 1.0)
    inner = np.where(np.abs(rn - 0.55) < 0.025, 0.8, 1.0)  # engraved ring
    # score line across the centre, rotated by theta: shows the rotation jitter
    across = np.abs(-np.sin(theta) * dx + np.cos(theta) * dy)
    score = np.where((across < 2.0 * s) & (rn < 0.5), 0.62, 1.0)
    shade = light * bevel * inner * score + rings + 0.015 * _smooth_noise(rng, n, 12 * s)
    colour = _METAL_RGB * rng.uniform(0.97, 1.03)
    obj = shade[..., None] * colour + rng.normal(0, 2.5, (n, n, 3))
    cover = np.clip(radius - r + 0.5, 0.0, 1.0)
    img = cover[..., None] * obj + (1 - cover[..., None]) * bg
    return img, cover, bg


def render_normal(kind: Kind, rng: np.random.Generator, image_size: int = 256) -> np.ndarray:
    """One defect-free RGB uint8 image of the given kind."""
    return to_uint8(render_layers(kind, rng, image_size)[0])


def render_layers(kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float, object support bool, 'background' float image)."""
    if kind == "texture":
        img, support = _render_texture(rng, n)
        backing = np.broadcast_to(_FABRIC_BACKING_RGB, img.shape)
        return img, support, np.asarray(backing, dtype=np.float64)
    if kind == "object":
        img, cover, bg = _render_object(rng, n)
        return img, cover > 0, bg
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
