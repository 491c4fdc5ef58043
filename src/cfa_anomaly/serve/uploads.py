"""Uploaded bytes -> a checked RGB image; arrays -> base64 PNGs for the answers."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from cfa_anomaly.data.images import pil_to_rgb
from cfa_anomaly.serve.errors import ServeError


def decode_image(data: bytes, max_pixels: int, name: str = "the upload") -> np.ndarray:
    """Uploaded bytes -> (H, W, 3) uint8 RGB, as Predictor.read reads a file of those bytes.

    The pixel count is checked from the header before any pixel is decoded, so a small file that declares
    a huge image (a decompression bomb) is refused cheaply; PIL's own DecompressionBombError is the same
    refusal. Empty -> empty_upload, unrecognised -> not_an_image, undecodable -> corrupt_image.
    """
    if not data:
        raise ServeError("empty_upload", f"{name} is empty (0 bytes): send the image file's bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ServeError("too_many_pixels", f"{name} declares more pixels than this service accepts ({err}); "
                                            f"at most {max_pixels} (--max-pixels)") from err
    except UnidentifiedImageError as err:
        raise ServeError("not_an_image", f"{name} is not an image that can be read (png, jpeg, bmp, tiff, "
                                         "...)") from err
    except Exception as err:  # PIL raises many types for hostile headers
        raise ServeError("corrupt_image", f"{name}: cannot read the image header ({err})") from err
    width, height = image.size
    if width < 1 or height < 1:
        raise ServeError("corrupt_image", f"{name} declares an empty image ({width} x {height})")
    if width * height > max_pixels:
        raise ServeError("too_many_pixels", f"{name} is {width} x {height} = {width * height} pixels; this "
                                            f"service accepts at most {max_pixels} (--max-pixels)")
    try:
        image.load()
        return pil_to_rgb(image)
    except Image.DecompressionBombError as err:
        raise ServeError("too_many_pixels", f"{name}: {err}") from err
    except Exception as err:  # truncated or broken data: OSError, SyntaxError, ValueError, ...
        raise ServeError("corrupt_image", f"{name} ({image.format}, {width} x {height}) cannot be decoded: "
                                          f"{err}; the file is truncated or corrupt") from err


def png_base64(pixels: np.ndarray) -> str:
    """An (H, W) or (H, W, 3) uint8 array as a base64 PNG string."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
