"""VisA as it ships (Zou et al., 2022; data.layout=visa): the split is a CSV file, the images and masks
live in each object's own tree.

    <root>/split_csv/1cls.csv             object,split,label,image,mask (the one-class split)
    <root>/<object>/Data/Images/Normal/0000.JPG
    <root>/<object>/Data/Images/Anomaly/000.JPG
    <root>/<object>/Data/Masks/Anomaly/000.png   0 background, defect > 0

data.root is <root>, data.category an object (candle, capsules, ..., pipe_fryum). Paths in the CSV are
relative to <root>. The one-class split trains on its `train` rows (all normal) and tests on its `test`
rows; `label` is `normal` or `anomaly`. 1cls.csv names no defect type, so every defective image's kind is
`anomaly`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cfa_anomaly.data.samples import GOOD, DatasetError, Sample, Split

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
ANOMALY_KIND = "anomaly"
VISA_CATEGORIES: tuple[str, ...] = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                                    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
EXPECTED_TREE = ("<root>/split_csv/1cls.csv (columns object,split,label,image,mask) and "
                 "<root>/<object>/Data/Images/..., as VisA ships")


def read_split(root: Path) -> list[dict[str, str]]:
    """The rows of <root>/split_csv/1cls.csv; DatasetError naming the file and the tree expected."""
    path = root / SPLIT_CSV
    if not path.is_file():
        raise DatasetError(f"{path} not found: data.layout=visa expects {EXPECTED_TREE}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path} lacks the column(s) {', '.join(missing)}: expected "
                               f"{','.join(COLUMNS)}")
        return list(reader)


def _sample(root: Path, row: dict[str, str], line: int, csv_path: Path) -> Sample:
    """One CSV row as a Sample; DatasetError naming the row when its label or files are wrong."""
    label = LABELS.get(row["label"].strip())
    if label is None:
        raise DatasetError(f"{csv_path}, line {line}: label {row['label']!r} is neither normal nor anomaly")
    image = root / row["image"].strip()
    if not image.is_file():
        raise DatasetError(f"{csv_path}, line {line}: image {image} not found")
    mask = None
    if label and (row.get("mask") or "").strip():
        mask = root / row["mask"].strip()
        if not mask.is_file():
            raise DatasetError(f"{csv_path}, line {line}: mask {mask} not found")
    return Sample(image=image, mask=mask, label=label, defect_type=ANOMALY_KIND if label else GOOD)


def visa_samples(root: str | Path, category: str, split: Split) -> list[Sample]:
    """One split of one VisA object, in the CSV's order; the test split's good images first."""
    root = Path(root).expanduser()
    rows = read_split(root)
    objects = sorted({row["object"].strip() for row in rows})
    if category not in objects:
        raise DatasetError(f"{root / SPLIT_CSV} has no rows for object {category!r} (data.category); "
                           f"it has: {', '.join(objects) or 'none'}")
    samples = [_sample(root, row, line, root / SPLIT_CSV) for line, row in enumerate(rows, start=2)
               if row["object"].strip() == category and row["split"].strip() == split]
    if split == "train" and any(s.label for s in samples):
        raise DatasetError(f"{root / SPLIT_CSV}: {category}'s train rows include anomalies; the one-class "
                           "split trains on normal images only")
    if not samples:
        raise DatasetError(f"{root / SPLIT_CSV} has no {split} rows for {category}")
    return sorted(samples, key=lambda s: s.label)  # stable: the good test images first, in the CSV's order
