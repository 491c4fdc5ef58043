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


def make_mvtec_ad_2(mvtec_root: Path, category: str, target: Path, name: str = "can",
                    validation: int = 3, private: int = 3) -> Path:
    """MVTec AD 2's tree from a synthetic MVTec-style category: <target>/<name>/{train/good,
    validation/good, test_public/{good, bad, ground_truth/bad/<stem>_mask.png (0/255)},
    test_private/NNN_regular.png, test_private_mixed/NNN_mixed.png}. The last `validation` training images
    become the validation set; the private sets are copies of test images, unlabelled."""
    source, obj = mvtec_root / category, target / name
    train = sorted((source / "train" / "good").iterdir())
    good = sorted((source / "test" / "good").iterdir())
    bad = sorted(p for d in (source / "test").iterdir() if d.name != "good" for p in d.iterdir())
    copies = [(train[:-validation], "train/good", "{:03d}_regular.png"),
              (train[-validation:], "validation/good", "{:03d}_regular.png"),
              (good, "test_public/good", "{:03d}_regular.png"), (bad, "test_public/bad", "{:03d}_regular.png"),
              ((good + bad)[:private], "test_private", "{:03d}_regular.png"),
              ((bad + good)[:private], "test_private_mixed", "{:03d}_mixed.png")]
    for paths, folder, pattern in copies:
        (obj / folder).mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            Image.open(path).convert("RGB").save(obj / folder / pattern.format(index))
    masks = obj / "test_public" / "ground_truth" / "bad"
    masks.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(bad):
        truth = Image.open(source / "ground_truth" / path.parent.name / f"{path.stem}_mask.png")
        Image.fromarray(np.where(np.asarray(truth) > 127, 255, 0).astype(np.uint8)).save(
            masks / f"{index:03d}_regular_mask.png")
    return target


def make_btad(mvtec_root: Path, category: str, target: Path, name: str = "01") -> Path:
    """BTAD's tree: <target>/<name>/{train/ok, test/ok, test/ko}/NNNN.bmp, ground_truth/ko/NNNN.png (0/255)."""
    source, product = mvtec_root / category, target / name
    bad = sorted(p for d in (source / "test").iterdir() if d.name != "good" for p in d.iterdir())
    for paths, folder in ((sorted((source / "train" / "good").iterdir()), "train/ok"),
                          (sorted((source / "test" / "good").iterdir()), "test/ok"), (bad, "test/ko")):
        (product / folder).mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            Image.open(path).convert("RGB").save(product / folder / f"{index:04d}.bmp")
    (product / "ground_truth" / "ko").mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(bad):
        truth = Image.open(source / "ground_truth" / path.parent.name / f"{path.stem}_mask.png")
        truth.save(product / "ground_truth" / "ko" / f"{index:04d}.png")
    return target


def make_loco(mvtec_root: Path, category: str, target: Path, name: str = "pushpins", validation: int = 3
              ) -> Path:
    """MVTec LOCO AD's tree: <target>/<name>/{train/good, validation/good, test/{good, logical_anomalies,
    structural_anomalies}}/NNN.png and ground_truth/<type>/NNN/000.png, 001.png (each defect's mask, 0/255:
    the synthetic mask split into its left and right halves where it has both)."""
    source, obj = mvtec_root / category, target / name
    train = sorted((source / "train" / "good").iterdir())
    bad = sorted(p for d in (source / "test").iterdir() if d.name != "good" for p in d.iterdir())
    kinds = {"logical_anomalies": bad[::2], "structural_anomalies": bad[1::2]}
    folders = [(train[:-validation], "train/good"), (train[-validation:], "validation/good"),
               (sorted((source / "test" / "good").iterdir()), "test/good"),
               *((paths, f"test/{kind}") for kind, paths in kinds.items())]
    for paths, folder in folders:
        (obj / folder).mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            Image.open(path).convert("RGB").save(obj / folder / f"{index:03d}.png")
    for kind, paths in kinds.items():
        for index, path in enumerate(paths):
            truth = np.asarray(Image.open(source / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"))
            masks = obj / "ground_truth" / kind / f"{index:03d}"
            masks.mkdir(parents=True, exist_ok=True)
            half = truth.shape[1] // 2
            left = np.arange(truth.shape[1]) < half
            parts = [np.where(left, truth, 0), np.where(~left, truth, 0)]
            parts = [part for part in parts if part.any()] or [truth]
            for number, part in enumerate(parts):
                Image.fromarray(part.astype(np.uint8)).save(masks / f"{number:03d}.png")
    return target
