"""The data a run uses, found and checked before any model work: the training, held-out and test samples of
the configured layout, and their loaders."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from torch.utils.data import DataLoader

from cfa_anomaly.config import Config
from cfa_anomaly.data.dataset import image_loader
from cfa_anomaly.data.folder import dataset_samples
from cfa_anomaly.data.images import unreadable
from cfa_anomaly.data.loco import loco_validation_samples
from cfa_anomaly.data.mvtec_ad_2 import validation_samples
from cfa_anomaly.data.samples import DatasetError, Sample, Split, folder_samples, split_holdout
from cfa_anomaly.io_utils import file_sha256

log = logging.getLogger(__name__)
# Layouts whose data sets ship their own defect-free validation images: those are the threshold hold-out
VALIDATION_HOLDOUT = {"mvtec_ad_2": validation_samples, "loco": loco_validation_samples}


def split_loader(cfg: Config, split: Split) -> DataLoader:
    """A loader of the train or test split of the data cfg names, batched as cfg says."""
    return image_loader(dataset_samples(cfg.data, split), cfg)


def training_split(cfg: Config) -> tuple[list[Sample], list[Sample]]:
    """(training images, held-out normal images for the threshold), as the config asks; in the folder layout
    both come from normal_dir less the images it gives to the test split.

    Images of data.holdout_dir that are also training or test images (the same file, or a copy with the same
    bytes) are refused with a DatasetError naming both files: a threshold taken from them would not be held
    out."""
    samples = dataset_samples(cfg.data, "train")
    if cfg.data.layout in VALIDATION_HOLDOUT:  # the set's own validation images are the hold-out
        return samples, VALIDATION_HOLDOUT[cfg.data.layout](cfg.data.root, cfg.data.category)
    if cfg.data.holdout_dir:
        holdout = folder_samples(cfg.data.holdout_dir)
        refuse_shared_images(holdout, {"training": samples, "test": _test_samples_if_any(cfg)})
        return samples, holdout
    return split_holdout(samples, cfg.data.holdout_fraction, cfg.train.seed)


def _test_samples_if_any(cfg: Config) -> list[Sample]:
    """The test split, or [] where there is none (no data.abnormal_dir, no test folder): a broken test split
    is reported by check_data when a run tests."""
    try:
        return dataset_samples(cfg.data, "test")
    except DatasetError as err:
        log.debug("data.holdout_dir not compared with the test images: %s", err)
        return []


def refuse_shared_images(holdout: list[Sample], others: dict[str, list[Sample]]) -> None:
    """A DatasetError when a held-out image is also one of `others` (split name -> samples): by resolved path,
    or by the SHA-256 of its bytes. Only files whose size equals a held-out file's size are read and hashed."""
    held = {sample.image.resolve(): sample.image for sample in holdout}
    sizes: dict[int, list[Path]] = {}
    for path in held.values():
        with contextlib.suppress(OSError):  # an unreadable file is reported by check_data
            sizes.setdefault(path.stat().st_size, []).append(path)
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> str | None:
        if path not in hashes:
            try:
                hashes[path] = file_sha256(path)
            except OSError:
                return None
        return hashes[path]

    for split, samples in others.items():
        for sample in samples:
            other = sample.image
            same_file = held.get(other.resolve())
            if same_file is not None:
                raise DatasetError(f"{same_file} (data.holdout_dir) is also a {split} image: {other} (the same "
                                   "file); held-out images must be neither trained on nor tested on: remove it "
                                   "from data.holdout_dir")
            try:
                size = other.stat().st_size
            except OSError:
                continue
            for candidate in sizes.get(size, []):
                if digest(candidate) is not None and digest(candidate) == digest(other):
                    raise DatasetError(f"{candidate} (data.holdout_dir) has the same bytes (SHA-256) as the {split} "
                                       f"image {other}; held-out images must be neither trained on nor tested on: "
                                       "remove the copy from data.holdout_dir")


def _bad_files(samples: list[Sample]) -> list[tuple[Path, str]]:
    """(file, reason) for every image or mask of the samples that cannot be read."""
    found = []
    for sample in samples:
        for path in (sample.image, sample.mask):
            reason = unreadable(path) if path is not None else None
            if reason:
                found.append((path, reason))
    return found


def check_data(cfg: Config, run_test: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Index and check the data before any output or model work; returns (training, held-out) samples.

    Unreadable test files always stop the run; unreadable training files too, unless data.skip_bad_images,
    which drops them and lists them in a warning.
    """
    train, holdout = training_split(cfg)
    if run_test:
        test = dataset_samples(cfg.data, "test")
        bad = _bad_files(test)
        if bad:
            raise DatasetError(f"{len(bad)} unreadable test file(s), e.g. {bad[0][0]}: {bad[0][1]}; "
                               "fix or remove them")
        maskless = [s for s in test if not s.mask_known]
        if maskless:  # allowed (image metrics need no masks), but said up front
            kinds = ", ".join(sorted({s.defect_type for s in maskless}))
            log.warning("%d of %d defective test image(s) have no mask (no mask folder for: %s): "
                        "image AUROC only, the pixel metrics stay undefined",
                        len(maskless), sum(s.label for s in test), kinds)
    bad = _bad_files(train + holdout)
    if bad and not cfg.data.skip_bad_images:
        raise DatasetError(f"{len(bad)} unreadable training file(s), e.g. {bad[0][0]}: {bad[0][1]}; fix or "
                           "remove them, or set data.skip_bad_images=true to skip them")
    if bad:
        skipped = {path for path, _ in bad}
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in bad)
        log.warning("skipping %d unreadable training image(s):\n  %s", len(bad), listing)
        train = [s for s in train if s.image not in skipped]
        holdout = [s for s in holdout if s.image not in skipped]
        if not train:
            raise DatasetError("no readable training images left after skipping the bad ones")
    return train, holdout
