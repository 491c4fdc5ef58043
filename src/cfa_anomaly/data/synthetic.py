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

The images are drawn in synthetic_normals.py, the defects painted in synthetic_defects.py; their public
names are importable from here too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from cfa_anomaly.data.synthetic_defects import DEFECT_TYPES, PAINTED_DEFECTS, make_defective, paint_defect
from cfa_anomaly.data.synthetic_normals import KINDS, Kind, render_normal

__all__ = [
    "DEFECT_TYPES",
    "KINDS",
    "PAINTED_DEFECTS",
    "generate_dataset",
    "make_defective",
    "paint_defect",
    "render_normal",
    "sample_rng",
]


def sample_rng(seed: int, split: str, defect: str, index: int) -> np.random.Generator:
    """Independent, deterministic generator for one image of the dataset."""
    split_id = ("train", "test").index(split)
    defect_id = (("good",) + DEFECT_TYPES).index(defect)
    return np.random.default_rng([seed, split_id, defect_id, index])


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Write one PNG (fast compression), making its folder."""
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
