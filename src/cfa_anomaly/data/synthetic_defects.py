"""Synthetic defects with exact masks: a scratch, hole, stain or missing piece on a generated image
(make_defective), and those or a pasted patch of another image on a real normal one (paint_defect)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from cfa_anomaly.data.synthetic_normals import Kind, crop_margin, pixel_grid, render_layers, to_uint8

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "missing")
PAINTED_DEFECTS: tuple[str, ...] = (*DEFECT_TYPES, "cutpaste")

_MIN_AREA_FRAC = 0.002
_MAX_AREA_FRAC = 0.10
_STAIN_RGB = np.array([[165.0, 40.0, 32.0], [36.0, 78.0, 175.0], [48.0, 125.0, 58.0], [110.0, 40.0, 135.0]])


def _sample_centre(rng: np.random.Generator, support: np.ndarray, extent: float) -> tuple[float, float]:
    """Random centre such that a shape of radius ``extent`` stays inside the
    centre crop and, for objects, inside the object support."""
    n = support.shape[0]
    lo, hi = crop_margin(n) + extent, n - crop_margin(n) - extent
    inner = ndimage.binary_erosion(support, iterations=max(1, int(np.ceil(extent))))
    for _ in range(200):
        cy, cx = rng.uniform(lo, hi, size=2)
        if inner[int(cy), int(cx)]:
            return float(cy), float(cx)
    ys, xs = np.nonzero(inner)  # fall back to any admissible pixel
    k = rng.integers(len(ys))
    return float(ys[k]), float(xs[k])


def _curve_distance(n: int, pts: np.ndarray, pad: float) -> np.ndarray:
    """Distance of every pixel centre to a densely sampled polyline ``pts``."""
    dist = np.full((n, n), np.inf)
    y0, x0 = np.floor(pts.min(0) - pad).astype(int).clip(0, n - 1)
    y1, x1 = np.ceil(pts.max(0) + pad).astype(int).clip(0, n - 1) + 1
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    d2 = (y[..., None] - pts[:, 0]) ** 2 + (x[..., None] - pts[:, 1]) ** 2
    dist[y0:y1, x0:x1] = np.sqrt(d2.min(-1))
    return dist


def _scratch(
    rng: np.random.Generator, img: np.ndarray, support: np.ndarray, bg: np.ndarray, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Thin (2-4 px) bright or dark line, 30-90 px long, straight or curved."""
    n = img.shape[0]
    s = n / 256 * scale
    thick = rng.uniform(2, 4) * s
    min_len = max(30 * s, 1.2 * _MIN_AREA_FRAC * scale**2 * n * n / thick)
    length = rng.uniform(min(min_len, 90 * s), 90 * s)
    centre = np.array(_sample_centre(rng, support, length / 2 + thick))
    ang = rng.uniform(0, np.pi)
    half = np.array([np.sin(ang), np.cos(ang)]) * length / 2
    bend = np.array([np.cos(ang), -np.sin(ang)]) * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0, 1, int(2 * length) + 2)[:, None]
    p0, p1, p2 = centre - half, centre + bend, centre + half
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    mask = _curve_distance(n, pts, thick) <= thick / 2
    level = rng.uniform(235, 250) if rng.random() < 0.5 else rng.uniform(18, 35)
    return mask, _flat(img, level * np.array([1.0, 0.98, 0.95]))


def _flat(img: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """A constant-colour paint image shaped like ``img``."""
    return np.broadcast_to(np.asarray(rgb, dtype=np.float64), img.shape)


def _hole(
    rng: np.random.Generator, img: np.ndarray, support: np.ndarray, bg: np.ndarray, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Dark filled ellipse (radii 7-14 px) with slight radial shading."""
    n = img.shape[0]
    s = n / 256 * scale
    a, b = rng.uniform(7, 14, size=2) * s
    cy, cx = _sample_centre(rng, support, max(a, b) + 1)
    ang = rng.uniform(0, np.pi)
    y, x = pixel_grid(n)
    u = np.cos(ang) * (x - cx) + np.sin(ang) * (y - cy)
    v = -np.sin(ang) * (x - cx) + np.cos(ang) * (y - cy)
    rho2 = (u / a) ** 2 + (v / b) ** 2
    mask = rho2 <= 1.0
    shade = 0.55 + 0.45 * rho2 + 0.15 * (y - cy) / max(a, b)  # lit rim at the bottom
    paint = shade[..., None] * np.array([42.0, 36.0, 32.0])
    return mask, paint


def _stain(
    rng: np.random.Generator, img: np.ndarray, support: np.ndarray, bg: np.ndarray, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Irregular smooth blob of a clearly different hue, alpha-blended."""
    n = img.shape[0]
    s = n / 256 * scale
    radius = rng.uniform(12, 24) * s
    cy, cx = _sample_centre(rng, support, 1.45 * radius)
    y, x = pixel_grid(n)
    theta = np.arctan2(y - cy, x - cx)
    edge = np.ones_like(theta)
    for k in (2, 3, 4):
        edge += rng.uniform(0.05, 0.14) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge *= radius
    depth = edge - np.hypot(y - cy, x - cx)  # > 0 inside the blob
    mask = depth > 0
    ramp = np.clip(depth / (0.4 * radius), 0.0, 1.0)
    alpha = np.where(mask, 0.4 + rng.uniform(0.3, 0.45) * ramp * ramp * (3 - 2 * ramp), 0.0)
    colour = _STAIN_RGB[rng.integers(len(_STAIN_RGB))]
    paint = (1 - alpha[..., None]) * img + alpha[..., None] * colour
    return mask, paint


def _missing(
    rng: np.random.Generator, img: np.ndarray, support: np.ndarray, bg: np.ndarray, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Texture: a patch replaced by a flat fill. Object: a bite out of the rim."""
    n = img.shape[0]
    s = n / 256 * scale
    y, x = pixel_grid(n)
    if support.all():  # texture
        h, w = rng.uniform(16, 40, size=2) * s
        cy, cx = _sample_centre(rng, support, 0.5 * np.hypot(h, w) + 1)
        ang = rng.uniform(0, np.pi)
        u = np.cos(ang) * (x - cx) + np.sin(ang) * (y - cy)
        v = -np.sin(ang) * (x - cx) + np.cos(ang) * (y - cy)
        return (np.abs(u) <= w / 2) & (np.abs(v) <= h / 2), bg
    # object: a disk centred just outside the rim, intersected with the object
    ys, xs = np.nonzero(support)
    oy, ox, orad = ys.mean(), xs.mean(), np.sqrt(support.sum() / np.pi)
    bite = rng.uniform(15, 26) * s
    phi = rng.uniform(0, 2 * np.pi)
    by, bx = oy + np.sin(phi) * (orad + 0.15 * bite), ox + np.cos(phi) * (orad + 0.15 * bite)
    return (np.hypot(y - by, x - bx) <= bite) & support, bg


# (rng, float image, object support, background image) -> (mask, paint image)
_DefectFn = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
_DEFECTS: dict[str, _DefectFn] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "missing": _missing,
}


def _mask_ok(mask: np.ndarray, scale: float = 1.0) -> bool:
    """Area within bounds (for defects `scale` times the usual size) and (nearly) inside the centre crop."""
    n = mask.shape[0]
    area = int(mask.sum())
    if not _MIN_AREA_FRAC * scale**2 * n * n <= area <= _MAX_AREA_FRAC * n * n:
        return False
    m = crop_margin(n)
    return mask[m : n - m, m : n - m].sum() >= 0.98 * area


def make_defective(
    kind: Kind, defect: str, rng: np.random.Generator, image_size: int = 256, defect_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a normal image and add one defect, sized as on a 256 px image scaled to image_size, times
    defect_scale (e.g. 128 / image_size: the defects of a 128 px image, 8-16 px across, on any size).

    Returns ``(clean, defective, mask)``: two RGB uint8 images and a bool mask.
    ``defective`` differs from ``clean`` exactly on ``mask``."""
    if defect not in _DEFECTS:
        raise ValueError(f"defect must be one of {DEFECT_TYPES}, got {defect!r}")
    img, support, bg = render_layers(kind, rng, image_size)
    clean = to_uint8(img)
    for _ in range(100):
        mask, paint = _DEFECTS[defect](rng, img, support, bg, defect_scale)
        if _mask_ok(mask, defect_scale):
            break
    else:  # pragma: no cover - the samplers are designed to succeed quickly
        raise RuntimeError(f"could not place a valid {defect!r} defect")
    out = clean.copy()
    out[mask] = to_uint8(paint[mask])
    # guarantee every masked pixel really changed (rare exact colour matches)
    same = mask & (out == clean).all(-1)
    out[same, 0] = np.where(clean[same, 0] < 128, clean[same, 0] + 1, clean[same, 0] - 1)
    return clean, out, mask


def _cut_paste(rng: np.random.Generator, img: np.ndarray, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle (16-40 px at 256) of another normal image pasted at a random place."""
    n = img.shape[0]
    s = n / 256
    h, w = (rng.uniform(16, 40, size=2) * s).astype(int).clip(2, n // 3)
    margin = crop_margin(n)
    top, left = rng.integers(margin, n - margin - h), rng.integers(margin, n - margin - w)
    src_top, src_left = rng.integers(0, n - h), rng.integers(0, n - w)
    mask = np.zeros((n, n), bool)
    mask[top: top + h, left: left + w] = True
    paint = img.copy()
    paint[top: top + h, left: left + w] = donor[src_top: src_top + h, src_left: src_left + w]
    return mask, paint


def paint_defect(rgb: np.ndarray, defect: str, rng: np.random.Generator,
                 donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect painted onto a real normal image: (defective uint8 image, exact bool mask).

    rgb: a square (n, n, 3) uint8 image (the model's input crop). The generator's defect kinds treat the
    whole image as the product (a texture); "missing" fills with a heavily blurred copy of the image,
    "cutpaste" pastes a rectangle of `donor` (another normal image of the same size; default: rgb itself).
    The mask is exactly the set of pixels that changed.
    """
    if rgb.ndim != 3 or rgb.shape[0] != rgb.shape[1]:
        raise ValueError(f"paint_defect needs a square (n, n, 3) image, got {rgb.shape}")
    if defect not in PAINTED_DEFECTS:
        raise ValueError(f"defect must be one of {PAINTED_DEFECTS}, got {defect!r}")
    img = rgb.astype(np.float64)
    support = np.ones(rgb.shape[:2], bool)
    for _ in range(100):
        if defect == "cutpaste":
            mask, paint = _cut_paste(rng, img, (donor if donor is not None else rgb).astype(np.float64))
        else:
            background = ndimage.gaussian_filter(img, sigma=(rgb.shape[0] / 16, rgb.shape[0] / 16, 0))
            mask, paint = _DEFECTS[defect](rng, img, support, background)
        out = rgb.copy()
        out[mask] = to_uint8(paint[mask])
        changed = (out != rgb).any(-1)
        if _mask_ok(changed):
            return out, changed
    raise ValueError(f"could not paint a visible {defect!r} defect on this image (it may be flat)")
