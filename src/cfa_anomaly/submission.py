"""MVTec AD 2's evaluation-server submission: the unlabelled private test sets of an object scored, and their
maps written in the structure MVTec's check_and_prepare_data_for_upload.py checks:

    <output>/anomaly_images/<object>/<split>/<stem>.tiff              float16, one channel, the image's size
    <output>/anomaly_images_thresholded/<object>/<split>/<stem>.png   0 / 255, the model's outline

for split in test_private and test_private_mixed. Run it for every object into one output folder, then check
and pack that folder with MVTec's script. The thresholded maps are the model's outlines
(Thresholds.defect_mask: nothing in an image decided good), so the model needs its held-out thresholds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cfa_anomaly.data.mvtec_ad_2 import PRIVATE_SPLITS, private_images
from cfa_anomaly.errors import CfaError
from cfa_anomaly.inference import Predictor
from cfa_anomaly.io_utils import atomic_write

CONTINUOUS, THRESHOLDED = "anomaly_images", "anomaly_images_thresholded"


class SubmissionError(CfaError, ValueError):
    """A submission that cannot be written as the evaluation server takes it; the message says why."""


def _tiff_bytes(anomaly_map: np.ndarray) -> bytes:
    try:
        import tifffile
    except ImportError as err:
        raise SubmissionError("writing MVTec AD 2's float16 TIFF maps needs tifffile: "
                              "pip install 'cfa-anomaly[mvtec-ad-2]'") from err
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(anomaly_map, dtype=np.float16))
    return buffer.getvalue()


def _png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_mvtec_ad_2_submission(predictor: Predictor, root: str | Path, category: str, output: Path
                                ) -> dict[str, int]:
    """Score category's test_private and test_private_mixed images; write both map kinds per image into
    output (atomically, file by file). Returns the number of images written per split."""
    if predictor.thresholds.outline_level is None:
        raise SubmissionError("the thresholded maps need the model's outline level: use a checkpoint or "
                              "export trained with held-out normal images")
    written = {}
    for split in PRIVATE_SPLITS:
        paths = private_images(root, category, split)
        for start in range(0, len(paths), predictor.batch_size):
            batch = paths[start: start + predictor.batch_size]
            result = predictor.predict(batch)
            for path, anomaly_map, mask in zip(batch, result.input_maps, result.defect_masks()):
                for kind, suffix, data in ((CONTINUOUS, ".tiff", _tiff_bytes(anomaly_map)),
                                           (THRESHOLDED, ".png", _png_bytes(mask))):
                    target = output / kind / category / split / f"{path.stem}{suffix}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(target, lambda handle, data=data: handle.write(data))
        written[split] = len(paths)
    return written
