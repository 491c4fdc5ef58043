"""The folder layout (data.layout=folder): normal and defective images in folders the user names.

    data.normal_dir/*.png                      defect-free training images
    data.abnormal_dir/*.png                    defective test images, or data.abnormal_dir/<defect>/*.png
    data.normal_test_dir/*.png                 defect-free test images (else a fraction of normal_dir)
    data.mask_dir/[<defect>/]<stem>_mask.png   optional masks (or <stem>.png), mirroring abnormal_dir

Defective images directly in abnormal_dir take its folder name as their defect type.
dataset_samples is the one entry that indexes a split of the configured data, whatever its layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cfa_anomaly.data.btad import btad_samples
from cfa_anomaly.data.loco import loco_samples
from cfa_anomaly.data.mvtec_ad_2 import mvtec_ad_2_samples
from cfa_anomaly.data.samples import (
    GOOD,
    DatasetError,
    Sample,
    Split,
    list_images,
    make_samples,
    pair_masks,
    split_holdout,
)
from cfa_anomaly.data.visa import visa_samples

if TYPE_CHECKING:
    from cfa_anomaly.config import DataConfig

NORMAL_TEST_SEED = 0  # fixed, not train.seed: runs with different seeds are tested on the same images


def dataset_samples(data: DataConfig, split: Split) -> list[Sample]:
    """One split of the configured data, in its layout (data.layout); a DatasetError names the folder."""
    if data.layout == "folder":
        return folder_layout_samples(data, split)
    readers = {"visa": visa_samples, "mvtec_ad_2": mvtec_ad_2_samples, "btad": btad_samples,
               "loco": loco_samples}
    return readers.get(data.layout, make_samples)(data.root, data.category, split)


def folder_layout_samples(data: DataConfig, split: Split) -> list[Sample]:
    """train: normal_dir less its test fraction; test: normal test images, then the defective ones."""
    train, normal_test = _split_normals(data)
    if split == "train":
        return train
    if not data.abnormal_dir:
        raise DatasetError("no test split: data.abnormal_dir is not set; give the folder of defective images "
                           "(--abnormal-dir) or train with --no-test")
    if data.normal_test_dir:
        normal_test = _normal_images(data, "normal_test_dir")
    return normal_test + _defective_images(data)


def _folder(data: DataConfig, key: str) -> Path:
    value = getattr(data, key)
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"folder not found: {folder} (data.{key} = {value!r}; a relative path is relative "
                           "to the current folder)")
    return folder


def _normal_images(data: DataConfig, key: str) -> list[Sample]:
    folder = _folder(data, key)
    images = list_images(folder)
    if not images:
        raise DatasetError(f"no image files in {folder} (data.{key}): put defect-free images there")
    return [Sample(image=p, mask=None, label=0, defect_type=GOOD) for p in images]


def _split_normals(data: DataConfig) -> tuple[list[Sample], list[Sample]]:
    """(training normals, normal test images taken from normal_dir): the latter only when there is a test
    split without a normal_test_dir."""
    normals = _normal_images(data, "normal_dir")
    if data.normal_test_dir or not data.abnormal_dir:
        return normals, []
    return split_holdout(normals, data.normal_test_fraction, NORMAL_TEST_SEED,
                         purpose="of data.normal_dir for testing",
                         remedy="give data.normal_test_dir (--normal-test-dir)")


def _defect_groups(folder: Path) -> list[tuple[str, list[Path], str]]:
    """(defect type, images, sub-folder) of abnormal_dir: one group per sub-folder, or the folder itself."""
    images = list_images(folder)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if images and subfolders:
        raise DatasetError(f"{folder} (data.abnormal_dir) holds both images and sub-folders "
                           f"({subfolders[0].name}/): put the defective images either all in sub-folders per "
                           "defect type or all directly in it")
    if images:
        return [(folder.name, images, "")]
    if not subfolders:
        raise DatasetError(f"no image files in {folder} (data.abnormal_dir): put defective images there")
    for sub in subfolders:
        if sub.name == GOOD:
            raise DatasetError(f"{sub}: a '{GOOD}' folder inside data.abnormal_dir would be scored as "
                               "defective; give defect-free test images as data.normal_test_dir "
                               "(--normal-test-dir)")
    return [(sub.name, list_images(sub), sub.name) for sub in subfolders]


def _defective_images(data: DataConfig) -> list[Sample]:
    """The defective test images, with their masks where data.mask_dir has them (else mask=None)."""
    folder = _folder(data, "abnormal_dir")
    mask_root = _folder(data, "mask_dir") if data.mask_dir else None
    samples: list[Sample] = []
    for defect, images, sub in _defect_groups(folder):
        if not images:
            raise DatasetError(f"empty defect folder {folder / sub} (data.abnormal_dir): remove it or add "
                               "images")
        mask_folder = mask_root / sub if mask_root else None
        masks: list[Path | None] = [None] * len(images)
        if mask_folder and mask_folder.is_dir():
            try:
                masks = list(pair_masks(images, mask_folder))
            except DatasetError as err:
                raise DatasetError(f"{err} (data.mask_dir = {data.mask_dir!r})") from None
        samples += [Sample(image=i, mask=m, label=1, defect_type=defect) for i, m in zip(images, masks)]
    if mask_root and all(s.mask is None for s in samples):
        raise DatasetError(f"no masks paired from {mask_root} (data.mask_dir): it needs one sub-folder per "
                           f"defect type of {folder} (data.abnormal_dir), e.g. "
                           f"{mask_root / samples[0].defect_type}")
    return samples
