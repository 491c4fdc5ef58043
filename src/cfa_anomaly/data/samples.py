"""The sample index of an MVTec AD-style category: which images, which masks, which labels.

Layout (MVTec AD, or a user's own product in the same shape)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

Masks are optional per defect type: a category without ground_truth/, or a defect type without its
ground_truth/<defect>/ folder, indexes its defective images with mask=None (image metrics only). Inside an
existing ground_truth/<defect>/ folder every image needs its mask (a missing one is a naming mistake).
Folders of the user's choice (data.layout=folder) are indexed by cfa_anomaly.data.folder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cfa_anomaly.errors import CfaError

Split = Literal["train", "test"]
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GOOD = "good"


class DatasetError(CfaError, ValueError):
    """A dataset folder that does not follow the layout; the message names the file or folder."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None  # None for good images, and for defective images of a defect type without masks
    label: int  # 0 good, 1 defective
    defect_type: str

    @property
    def mask_known(self) -> bool:
        """Whether the pixel ground truth is known: good images (empty mask) and defective ones with a mask."""
        return self.label == 0 or self.mask is not None


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted; hidden files ignored."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _mask_stem(mask: Path) -> str:
    return mask.stem.removesuffix("_mask")


def required_images(folder: Path, expected: str, what: str) -> list[Path]:
    """The images of a folder a data set's layout requires; a DatasetError naming it and the tree expected
    when it is missing, or naming `what` it should hold when it is empty."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found: expected {expected}")
    images = list_images(folder)
    if not images:
        raise DatasetError(f"no images in {folder} ({what})")
    return images


def pair_masks(images: list[Path], mask_folder: Path) -> list[Path]:
    """Return the mask of each image; every image needs exactly one mask and every mask an image."""
    masks_by_stem: dict[str, Path] = {}
    for mask in list_images(mask_folder):
        stem = _mask_stem(mask)
        if stem in masks_by_stem:
            raise DatasetError(f"two masks for image stem {stem!r}: {masks_by_stem[stem]} and {mask}; keep one")
        masks_by_stem[stem] = mask
    paired: list[Path] = []
    for image in images:
        mask = masks_by_stem.pop(image.stem, None)
        if mask is None:
            raise DatasetError(
                f"no mask for {image}: expected {mask_folder / (image.stem + '_mask.png')} "
                f"or {mask_folder / (image.stem + '.png')}"
            )
        paired.append(mask)
    if masks_by_stem:
        orphan = min(masks_by_stem.values())
        raise DatasetError(f"mask without an image: {orphan} (no image with stem {_mask_stem(orphan)!r} "
                           f"in {images[0].parent if images else 'the test folder'})")
    return paired


def category_dir(root: str | Path, category: str) -> Path:
    """The category folder, or a DatasetError saying where it was looked for."""
    folder = Path(root).expanduser() / category
    if not (folder / "train").is_dir():
        parent = Path(root).expanduser()
        present = sorted(p.name for p in parent.iterdir() if (p / "train").is_dir()) if parent.is_dir() else []
        choices = f"; categories under that root: {', '.join(present)}" if present else ""
        raise DatasetError(
            f"dataset not found: looked for {folder / 'train'} (data.root={str(root)!r}, "
            f"data.category={category!r}); pass --data_root / data.root=<folder holding {category}/>{choices}"
        )
    return folder


def make_samples(root: str | Path, category: str, split: Split, good: str = GOOD) -> list[Sample]:
    """Index one split of a category; raises DatasetError naming the file when the layout is broken.
    good: the folder of the defect-free images (BTAD calls it ok); they get the kind good."""
    folder = category_dir(root, category) / split
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder}")
    if split == "train":
        good_dir = folder / good
        images = list_images(good_dir) if good_dir.is_dir() else []
        if not images:
            raise DatasetError(f"no training images in {good_dir}: put defect-free images there")
        return [Sample(image=p, mask=None, label=0, defect_type=GOOD) for p in images]

    samples: list[Sample] = []
    for defect_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(defect_dir)
        if not images:
            raise DatasetError(f"empty test folder {defect_dir}: remove it or add images")
        if defect_dir.name == good:
            samples += [Sample(image=p, mask=None, label=0, defect_type=GOOD) for p in images]
            continue
        mask_folder = folder.parent / "ground_truth" / defect_dir.name
        if mask_folder.is_dir():
            masks: list[Path | None] = list(pair_masks(images, mask_folder))
        else:  # no masks for this defect type (or the whole category): image-level ground truth only
            masks = [None] * len(images)
        samples += [Sample(image=i, mask=m, label=1, defect_type=defect_dir.name) for i, m in zip(images, masks)]
    if not samples:
        raise DatasetError(f"no test images under {folder}: expected test/{good}/ and test/<defect>/ folders")
    return samples


def missing_masks(samples: list[Sample]) -> list[Sample]:
    """The defective samples without a mask (their defect type has no ground_truth folder)."""
    return [s for s in samples if not s.mask_known]


def split_holdout(samples: list[Sample], fraction: float, seed: int, purpose: str = "for the threshold",
                  remedy: str = "set data.holdout_fraction=0") -> tuple[list[Sample], list[Sample]]:
    """(kept, held out): a seeded random fraction of the images held out, by default to set the decision
    threshold; both keep the original order. purpose and remedy word the error when too few are given."""
    if fraction <= 0:
        return list(samples), []
    count = max(1, round(fraction * len(samples)))
    if count >= len(samples):
        raise DatasetError(
            f"only {len(samples)} image(s): too few to hold out {fraction:.0%} {purpose}; "
            f"add images or {remedy}"
        )
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


def folder_samples(folder: str | Path) -> list[Sample]:
    """Normal images of a plain folder (e.g. a user-given hold-out set)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"folder not found: {folder}")
    images = list_images(folder)
    if not images:
        raise DatasetError(f"no image files in {folder}")
    return [Sample(image=p, mask=None, label=0, defect_type=GOOD) for p in images]
