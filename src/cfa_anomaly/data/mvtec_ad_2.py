"""MVTec AD 2 as it ships (Heckler-Kram et al., 2025; data.layout=mvtec_ad_2).

    <root>/<object>/train/good/*.png                    defect-free training images
    <root>/<object>/validation/good/*.png               defect-free: the hold-out for the thresholds
    <root>/<object>/test_public/good/*.png, bad/*.png   the labelled test set
    <root>/<object>/test_public/ground_truth/bad/<stem>_mask.png    0 / 255
    <root>/<object>/test_private/*.png, test_private_mixed/*.png    unlabelled: scored for the evaluation
                                                                    server (submission.py)

data.root is <root>, data.category an object (can, fabric, fruit_jelly, rice, sheet_metal, vial, wallplugs,
walnuts). The validation images replace data.holdout_fraction: every training image is trained on.
"""

from __future__ import annotations

from pathlib import Path

from cfa_anomaly.data.samples import GOOD, DatasetError, Sample, Split, pair_masks, required_images

MVTEC_AD_2_CATEGORIES: tuple[str, ...] = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial",
                                          "wallplugs", "walnuts")
PRIVATE_SPLITS: tuple[str, ...] = ("test_private", "test_private_mixed")
DEFECTIVE_KIND = "bad"
EXPECTED_TREE = ("<root>/<object>/{train/good, validation/good, test_public/{good, bad, ground_truth/bad}, "
                 "test_private, test_private_mixed}, as MVTec AD 2 ships")


def _object_dir(root: str | Path, category: str) -> Path:
    folder = Path(root).expanduser() / category
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found (data.root / data.category): data.layout=mvtec_ad_2 expects "
                           f"{EXPECTED_TREE}")
    return folder


def _images(folder: Path, what: str) -> list[Path]:
    return required_images(folder, f"data.layout=mvtec_ad_2's {EXPECTED_TREE}", what)


def _good(paths: list[Path]) -> list[Sample]:
    return [Sample(image=p, mask=None, label=0, defect_type=GOOD) for p in paths]


def mvtec_ad_2_samples(root: str | Path, category: str, split: Split) -> list[Sample]:
    """train: train/good; test: test_public's good images, then its bad ones with their masks."""
    folder = _object_dir(root, category)
    if split == "train":
        return _good(_images(folder / "train" / GOOD, "the training images"))
    public = folder / "test_public"
    bad = _images(public / DEFECTIVE_KIND, "the defective public test images")
    mask_folder = public / "ground_truth" / DEFECTIVE_KIND
    _images(mask_folder, "the masks of the bad images")
    masks = pair_masks(bad, mask_folder)
    return (_good(_images(public / GOOD, "the good public test images"))
            + [Sample(image=i, mask=m, label=1, defect_type=DEFECTIVE_KIND) for i, m in zip(bad, masks)])


def validation_samples(root: str | Path, category: str) -> list[Sample]:
    """validation/good: the held-out normal images the thresholds are set on."""
    return _good(_images(_object_dir(root, category) / "validation" / GOOD, "the validation images"))


def private_images(root: str | Path, category: str, split: str) -> list[Path]:
    """The unlabelled images of test_private or test_private_mixed, in name order."""
    if split not in PRIVATE_SPLITS:
        raise ValueError(f"split must be one of {PRIVATE_SPLITS}, got {split!r}")
    return _images(_object_dir(root, category) / split, f"the {split} images")
