"""MVTec LOCO AD (Bergmann et al., 2022) as it ships (data.layout=loco): logical and structural anomalies,
several masks per defective image.

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png          defect-free: the hold-out for the thresholds
    <root>/<category>/test/{good, logical_anomalies, structural_anomalies}/<stem>.png
    <root>/<category>/ground_truth/<anomaly type>/<stem>/000.png, 001.png, ...   one file per defect

data.category is one of breakfast_box, juice_bottle, pushpins, screw_bag, splicing_connectors. An image's
mask is the union of its defect files (images.read_mask reads a folder so). The two anomaly types are
reported apart as defect kinds (metrics.json per_kind). LOCO's own localisation metric, sPRO with each
defect's saturation threshold (defects_config.json), is not computed: the pixel metrics here are the
standard ones on the union masks and are not comparable with published sPRO figures.
"""

from __future__ import annotations

from pathlib import Path

from cfa_anomaly.data.samples import GOOD, DatasetError, Sample, Split, list_images, required_images

LOCO_CATEGORIES: tuple[str, ...] = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag",
                                    "splicing_connectors")
ANOMALY_TYPES: tuple[str, ...] = ("logical_anomalies", "structural_anomalies")
EXPECTED_TREE = ("<root>/<category>/{train/good, validation/good, test/{good, logical_anomalies, "
                 "structural_anomalies}, ground_truth/<anomaly type>/<stem>/*.png}, as MVTec LOCO AD ships")


def _images(folder: Path) -> list[Path]:
    return required_images(folder, f"data.layout=loco's {EXPECTED_TREE}", "images of the set")


def _good(folder: Path) -> list[Sample]:
    return [Sample(image=p, mask=None, label=0, defect_type=GOOD) for p in _images(folder)]


def _defective(category_dir: Path, kind: str) -> list[Sample]:
    """The test images of one anomaly type, each with its folder of defect masks."""
    samples = []
    for image in _images(category_dir / "test" / kind):
        masks = category_dir / "ground_truth" / kind / image.stem
        if not masks.is_dir() or not list_images(masks):
            raise DatasetError(f"no masks for {image}: expected the folder {masks} with one PNG per defect")
        samples.append(Sample(image=image, mask=masks, label=1, defect_type=kind))
    return samples


def loco_samples(root: str | Path, category: str, split: Split) -> list[Sample]:
    """train: train/good; test: test/good, then each anomaly type's images with their masks."""
    folder = Path(root).expanduser() / category
    if split == "train":
        return _good(folder / "train" / GOOD)
    return _good(folder / "test" / GOOD) + [s for kind in ANOMALY_TYPES for s in _defective(folder, kind)]


def loco_validation_samples(root: str | Path, category: str) -> list[Sample]:
    """validation/good: the held-out normal images the thresholds are set on."""
    return _good(Path(root).expanduser() / category / "validation" / GOOD)
