"""Synthetic MVTec AD-style dataset: the toolkit's embedded default.

``generate_dataset`` writes a small dataset in the exact MVTec AD folder layout::

    root/category/train/good/000.png ...
    root/category/test/good/000.png ...
    root/category/test/<defect>/000.png ...
    root/category/ground_truth/<defect>/000_mask.png ...

Two kinds of normal images exist: ``"texture"`` (a woven fabric) and
``"object"`` (a machined metal disk on a plain background).  Defects are
``scratch``, ``hole``, ``stain`` and ``missing``.  Every ground-truth mask is
exactly the set of pixels the defect changed, lies inside the central
224/256 crop and covers between ~0.2% and ~10% of the image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "DEFECT_TYPES",
    "KINDS",
    "generate_dataset",
    "make_defective",
    "paint_defect",
    "render_normal",
    "sample_rng",
]

Kind = Literal["texture", "object"]
KINDS: tuple[str, ...] = ("texture", "object")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "missing")

_MIN_AREA_FRAC = 0.002
_MAX_AREA_FRAC = 0.10
_CROP_FRAC = 224 / 256
_FABRIC_RGB = np.array([196.0, 178.0, 148.0])
_FABRIC_BACKING_RGB = np.array([238.0, 236.0, 230.0])
_METAL_RGB = np.array([176.0, 178.0, 184.0])
_BG_RGB = np.array([62.0, 66.0, 72.0])
_STAIN_RGB = np.array([[165.0, 40.0, 32.0], [36.0, 78.0, 175.0], [48.0, 125.0, 58.0], [110.0, 40.0, 135.0]])


# --------------------------------------------------------------------------- helpers


def sample_rng(seed: int, split: str, defect: str, index: int) -> np.random.Generator:
    """Independent, deterministic generator for one image of the dataset."""
    split_id = ("train", "test").index(split)
    defect_id = (("good",) + DEFECT_TYPES).index(defect)
    return np.random.default_rng([seed, split_id, defect_id, index])


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` as float arrays of shape (n, n)."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    return y, x


def _crop_margin(n: int) -> int:
    """Margin (px) removed on each side by the centre crop (16 for n=256)."""
    return (n - round(n * _CROP_FRAC)) // 2


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Low-frequency noise field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


# --------------------------------------------------------------------------- normals


def _render_texture(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-weave fabric. Returns (image float HxWx3, 'support' mask = all True)."""
    s = n / 256
    period = 14.0 * s
    y, x = _grid(n)
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
    y, x = _grid(n)
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
    return _to_uint8(_render_layers(kind, rng, image_size)[0])


def _render_layers(kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float, object support bool, 'background' float image)."""
    if kind == "texture":
        img, support = _render_texture(rng, n)
        backing = np.broadcast_to(_FABRIC_BACKING_RGB, img.shape)
        return img, support, np.asarray(backing, dtype=np.float64)
    if kind == "object":
        img, cover, bg = _render_object(rng, n)
        return img, cover > 0, bg
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# --------------------------------------------------------------------------- defects


def _sample_centre(rng: np.random.Generator, support: np.ndarray, extent: float) -> tuple[float, float]:
    """Random centre such that a shape of radius ``extent`` stays inside the
    centre crop and, for objects, inside the object support."""
    n = support.shape[0]
    lo, hi = _crop_margin(n) + extent, n - _crop_margin(n) - extent
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
    y, x = _grid(n)
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
    y, x = _grid(n)
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
    y, x = _grid(n)
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
    m = _crop_margin(n)
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
    img, support, bg = _render_layers(kind, rng, image_size)
    clean = _to_uint8(img)
    for _ in range(100):
        mask, paint = _DEFECTS[defect](rng, img, support, bg, defect_scale)
        if _mask_ok(mask, defect_scale):
            break
    else:  # pragma: no cover - the samplers are designed to succeed quickly
        raise RuntimeError(f"could not place a valid {defect!r} defect")
    out = clean.copy()
    out[mask] = _to_uint8(paint[mask])
    # guarantee every masked pixel really changed (rare exact colour matches)
    same = mask & (out == clean).all(-1)
    out[same, 0] = np.where(clean[same, 0] < 128, clean[same, 0] + 1, clean[same, 0] - 1)
    return clean, out, mask


def _cut_paste(rng: np.random.Generator, img: np.ndarray, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle (16-40 px at 256) of another normal image pasted at a random place."""
    n = img.shape[0]
    s = n / 256
    h, w = (rng.uniform(16, 40, size=2) * s).astype(int).clip(2, n // 3)
    margin = _crop_margin(n)
    top, left = rng.integers(margin, n - margin - h), rng.integers(margin, n - margin - w)
    src_top, src_left = rng.integers(0, n - h), rng.integers(0, n - w)
    mask = np.zeros((n, n), bool)
    mask[top: top + h, left: left + w] = True
    paint = img.copy()
    paint[top: top + h, left: left + w] = donor[src_top: src_top + h, src_left: src_left + w]
    return mask, paint


PAINTED_DEFECTS: tuple[str, ...] = (*DEFECT_TYPES, "cutpaste")


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
        out[mask] = _to_uint8(paint[mask])
        changed = (out != rgb).any(-1)
        if _mask_ok(changed):
            return out, changed
    raise ValueError(f"could not paint a visible {defect!r} defect on this image (it may be flat)")


# --------------------------------------------------------------------------- writer


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


def _write_tree(
    out: Path, kind: Kind, counts: dict[str, int], n_train: int, image_size: int, seed: int,
    defect_scale: float = 1.0,
) -> None:
    for i in range(n_train):
        img = render_normal(kind, sample_rng(seed, "train", "good", i), image_size)
        _save_png(img, out / "train" / "good" / f"{i:03d}.png")
    for defect, count in counts.items():
        for i in range(count):
            rng = sample_rng(seed, "test", defect, i)
            if defect == "good":
                _save_png(render_normal(kind, rng, image_size), out / "test" / "good" / f"{i:03d}.png")
                continue
            _, img, mask = make_defective(kind, defect, rng, image_size, defect_scale)
            _save_png(img, out / "test" / defect / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, out / "ground_truth" / defect / f"{i:03d}_mask.png")


def generate_dataset(
    root: Path,
    category: str = "synthetic",
    kind: Literal["texture", "object"] = "texture",
    n_train: int = 24,
    n_test_good: int = 6,
    n_test_per_defect: int = 3,
    image_size: int = 256,
    seed: int = 0,
    defect_scale: float = 1.0,
) -> Path:
    """Write a synthetic MVTec AD-style category under ``root/category``. Defects are sized as on a 256 px
    image scaled to image_size, times defect_scale (make_defective).

    Generation happens in a temporary folder under ``root`` that is renamed
    into place only when complete, so a failure leaves no half-written tree.
    Raises ``FileExistsError`` if ``root/category`` exists and is non-empty."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not category or Path(category).name != category or category.startswith("."):
        raise ValueError(f"category must be a plain folder name, got {category!r}")
    if n_train < 1 or n_test_good < 0 or n_test_per_defect < 0:
        raise ValueError("n_train must be >= 1 and the test counts >= 0")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    if not 0 < defect_scale <= 1:
        raise ValueError(f"defect_scale must be in (0, 1], got {defect_scale}")
    root = Path(root)
    target = root / category
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"refusing to overwrite existing non-empty path: {target}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=root))
    try:
        counts = {"good": n_test_good, **{d: n_test_per_defect for d in DEFECT_TYPES}}
        _write_tree(tmp, kind, counts, n_train, image_size, seed, defect_scale)
        for defect in DEFECT_TYPES:  # keep the layout complete even for zero counts
            (tmp / "test" / defect).mkdir(parents=True, exist_ok=True)
            (tmp / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        (tmp / "test" / "good").mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            target.rmdir()  # empty: checked above
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
