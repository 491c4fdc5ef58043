"""Reading images and masks, and giving both the same geometry (resize, then center-crop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cfa_anomaly.data.samples import DatasetError


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as err:
        raise DatasetError(f"file not found: {path}") from err
    except Image.DecompressionBombError as err:
        raise DatasetError(f"image {path} is too large to decode safely ({err}); resize it first") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}; the file is corrupt or not an image") from err
    return image


def _mask_files(folder: Path) -> list[Path]:
    """The files of a mask folder (a mask per defect, MVTec LOCO AD), sorted; hidden files ignored."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def unreadable(path: Path) -> str | None:
    """Why an image file cannot be used (empty, truncated, not an image), or None when it looks sound.

    A cheap check (header and, for PNG, chunk checksums) run on every file before any model work. A folder
    (a mask per defect, MVTec LOCO AD) is checked file by file.
    """
    if path.is_dir():
        files = _mask_files(path)
        reasons = [(p, unreadable(p)) for p in files]
        bad = [(p, r) for p, r in reasons if r]
        return f"{bad[0][0].name}: {bad[0][1]}" if bad else (None if files else "an empty mask folder")
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        return "file not found"
    except Image.DecompressionBombError as err:
        return f"too large to decode safely ({err})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({err})"
    return None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale by the pixel type, never by content: integer data is 16-bit (0..65535), float data 0..1."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return (np.clip(array.astype(np.float64), 0, 65535) * (255.0 / 65535.0) + 0.5).astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 array: grayscale is repeated, alpha dropped.

    Single-channel 16-bit or 32-bit integer images (PIL modes I;16 and I) are read as 16-bit data and
    scaled by 255/65535; float images (mode F) as 0..1.
    """
    return pil_to_rgb(_open(path))


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode as an (H, W, 3) uint8 array, as read_rgb reads files."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def array_to_rgb(array: np.ndarray, source: str = "array") -> np.ndarray:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as (H, W, 3) uint8 RGB; alpha dropped.

    uint8 is taken as is, other integer types as 16-bit data (0..65535), floats as 0..1, like image files.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[:, :, :3] if array.shape[2] != 1 else array[:, :, 0]
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise DatasetError(f"{source} has shape {array.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetError(f"{source} has dtype {array.dtype}: expected uint8, uint16 or float in 0..1")
    rgb = _to_uint8(array)
    return np.repeat(rgb[:, :, None], 3, axis=2) if rgb.ndim == 2 else np.array(rgb)  # a writable copy


def read_mask(path: Path) -> np.ndarray:
    """A mask file as an (H, W) bool array: defective where the value is at least half the mask's maximum.

    That reads 0/255 (MVTec), 0/1 and 16-bit 0/65535 masks alike, and soft (anti-aliased) edges at 50%.
    A folder of mask files (one per defect, as MVTec LOCO AD has them) reads as their union.
    """
    if path.is_dir():
        files = _mask_files(path)
        if not files:
            raise DatasetError(f"mask folder {path} holds no mask files")
        masks = [read_mask(p) for p in files]
        if any(m.shape != masks[0].shape for m in masks):
            raise DatasetError(f"the masks in {path} differ in size: one image's defects need one size")
        return np.logical_or.reduce(masks)
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "1", "L", "P"):
        raw = np.asarray(image.convert("L") if image.mode in ("1", "P") else image)
    else:
        raw = np.asarray(image.convert("L"))
    if raw.ndim != 2:
        raise DatasetError(f"mask {path} has shape {raw.shape}: expected a single-channel image")
    top = raw.max(initial=0)
    if top <= 0:
        return np.zeros(raw.shape, dtype=bool)
    return raw.astype(np.float64) >= top / 2.0


def resized_shape(height: int, width: int, resize: int, keep_aspect: bool = False) -> tuple[int, int]:
    """The (H, W) an image is resized to before the centre crop: resize x resize (squashed), or with
    keep_aspect its short side to resize and the long side in proportion."""
    if not keep_aspect:
        return resize, resize
    scale = resize / min(height, width)
    return max(resize, round(height * scale)), max(resize, round(width * scale))


def resize_center_crop(tensor: torch.Tensor, resize: int, crop: int, nearest: bool = False,
                       keep_aspect: bool = False) -> torch.Tensor:
    """Resize a (C, H, W) tensor (to resize x resize, or with keep_aspect its short side to resize), then
    keep the central crop x crop square."""
    mode = "nearest-exact" if nearest else "bilinear"
    kwargs = {} if nearest else {"align_corners": False, "antialias": True}
    height, width = resized_shape(*tensor.shape[-2:], resize, keep_aspect)
    resized = F.interpolate(tensor[None].float(), size=(height, width), mode=mode, **kwargs)[0]
    top, left = (height - crop) // 2, (width - crop) // 2
    return resized[:, top: top + crop, left: left + crop]


def image_to_tensor(rgb: np.ndarray, resize: int, crop: int, keep_aspect: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, crop, crop) float tensor in 0..1."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    return resize_center_crop(tensor, resize, crop, keep_aspect=keep_aspect).clamp_(0.0, 1.0)


def tensor_to_rgb(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in 0..1 (image_to_tensor's output) -> (H, W, 3) uint8: the image as the model saw it."""
    return (tensor.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def mask_to_tensor(mask: np.ndarray, resize: int, crop: int, keep_aspect: bool = False) -> torch.Tensor:
    """(H, W) bool -> (crop, crop) bool tensor, nearest-neighbour so it stays binary; the image's geometry."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask))[None].to(torch.uint8)
    return resize_center_crop(tensor, resize, crop, nearest=True, keep_aspect=keep_aspect)[0] > 0.5


def check_same_size(mask: np.ndarray, mask_path: Path, image: np.ndarray, image_path: Path) -> None:
    if mask.shape != image.shape[:2]:
        raise DatasetError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size"
        )


def map_to_input_size(anomaly_map: np.ndarray, size: tuple[int, int], resize: int, crop: int,
                      keep_aspect: bool = False) -> np.ndarray:
    """A (crop, crop) map back onto the input's own (H, W) pixels: the inverse of resize_center_crop.

    The map is placed where the crop came from in the resized image (resize x resize, or with keep_aspect
    the short side at resize), the border that the crop cut away is filled with the map's nearest edge
    values (the model never saw it), and the result is resized bilinearly to (H, W).
    """
    tensor = torch.as_tensor(np.asarray(anomaly_map, dtype=np.float32))[None, None]
    height, width = resized_shape(*size, resize, keep_aspect)
    top, left = (height - crop) // 2, (width - crop) // 2
    bottom, right = height - crop - top, width - crop - left
    if top or left or bottom or right:
        tensor = F.pad(tensor, (left, right, top, bottom), mode="replicate")
    if tuple(size) != (height, width):
        tensor = F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)
    return tensor[0, 0].numpy()
