"""Small copies of public data sets' layouts exactly as they ship (file names, folders, mask values, CSV
columns), made from the synthetic MVTec-style set: the real sets cannot be downloaded here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def make_visa(mvtec_root: Path, category: str, target: Path, name: str = "candle") -> Path:
    """VisA's tree from a synthetic MVTec-style category: <target>/split_csv/1cls.csv and
    <target>/<name>/Data/{Images/Normal/NNNN.JPG, Images/Anomaly/NNN.JPG, Masks/Anomaly/NNN.png (0/1)}."""
    source = mvtec_root / category
    images = target / name / "Data" / "Images"
    masks = target / name / "Data" / "Masks" / "Anomaly"
    for folder in (images / "Normal", images / "Anomaly", masks):
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    normals = sorted((source / "train" / "good").iterdir()) + sorted((source / "test" / "good").iterdir())
    n_train = len(list((source / "train" / "good").iterdir()))
    for index, path in enumerate(normals):
        out = images / "Normal" / f"{index:04d}.JPG"
        Image.open(path).convert("RGB").save(out, quality=95)
        rows.append([name, "train" if index < n_train else "test", "normal", out.relative_to(target).as_posix(),
                     ""])
    defective = sorted(p for d in (source / "test").iterdir() if d.name != "good" for p in d.iterdir())
    for index, path in enumerate(defective):
        out = images / "Anomaly" / f"{index:03d}.JPG"
        Image.open(path).convert("RGB").save(out, quality=95)
        truth = source / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        mask = masks / f"{index:03d}.png"
        Image.fromarray((np.asarray(Image.open(truth)) > 127).astype(np.uint8)).save(mask)  # 0/1, as VisA
        rows.append([name, "test", "anomaly", out.relative_to(target).as_posix(),
                     mask.relative_to(target).as_posix()])
    (target / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(target / "split_csv" / "1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return target
