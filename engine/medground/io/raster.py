"""Read 2D raster images and masks (PNG, JPEG, BMP, TIFF) into NumPy arrays.

Arrays are ``(H, W)`` for single-channel files and ``(H, W, C)`` otherwise, in the
file's own integer type (bool for 1-bit, uint8, uint16 or int32).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow refuses to decode images above this many pixels unless told otherwise; whole-slide
# scans are out of scope for 2D raster reading, so the limit is raised only moderately.
Image.MAX_IMAGE_PIXELS = 20000 * 20000


class RasterError(Exception):
    """A file that cannot be read as an image, with the path and the reason."""


@dataclass(frozen=True)
class Raster:
    """A decoded raster file."""

    path: Path
    array: np.ndarray
    mode: str
    sha256: str | None

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.array.shape[1])


def read_raster(
    path: Path, keep_palette_indices: bool = False, hash_content: bool = True
) -> Raster:
    """Decode an image file completely.

    Args:
        path: the file.
        keep_palette_indices: for palette ('P') images, return the indices instead of colours
            (label maps saved as indexed PNG store class ids as indices).
        hash_content: compute the file's SHA-256 (records carry it for images; masks are
            read without it).

    Raises:
        RasterError: when the file is missing, not an image, or truncated.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise RasterError(f"{path}: file not found") from exc
    except OSError as exc:
        raise RasterError(f"{path}: cannot read file ({exc.strerror})") from exc
    digest = hashlib.sha256(data).hexdigest() if hash_content else None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            if mode == "P" and not keep_palette_indices:
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode in ("LA", "PA"):
                image = image.convert("L")
            elif mode == "CMYK" or mode == "YCbCr":
                image = image.convert("RGB")
            array = np.asarray(image)
    except UnidentifiedImageError as exc:
        raise RasterError(f"{path}: not a readable image (PNG, JPEG, BMP or TIFF)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise RasterError(f"{path}: corrupt or truncated image ({exc})") from exc
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return Raster(path=path, array=array, mode=mode, sha256=digest)


def channel_sum(array: np.ndarray) -> np.ndarray:
    """Return the ``(H, W)`` sum of the three colour channels in an integer type wide enough.

    Comparing this sum with ``3 * t`` decides ``mean > t`` exactly, without floats.
    """
    wide = np.uint16 if array.dtype in (np.uint8, np.bool_) else np.int64
    total = array[:, :, 0].astype(wide)
    total += array[:, :, 1]
    total += array[:, :, 2]
    return total


def to_grey(array: np.ndarray) -> np.ndarray:
    """Return an ``(H, W)`` image: the mean of RGB channels (float32), or the array itself."""
    if array.ndim == 2:
        return array
    return np.multiply(channel_sum(array), np.float32(1 / 3), dtype=np.float32)


def channel_spread(array: np.ndarray) -> int:
    """Return the largest difference between colour channels of any pixel (0 for grey).

    That is the largest per-pixel maximum minus minimum of the three channels, which
    stays within the array's own unsigned type.
    """
    if array.ndim == 2:
        return 0
    red, green, blue = array[:, :, 0], array[:, :, 1], array[:, :, 2]
    high = np.maximum(red, green)
    np.maximum(high, blue, out=high)
    low = np.minimum(red, green)
    np.minimum(low, blue, out=low)
    if array.dtype.kind == "u":
        return int(np.subtract(high, low, out=high).max())
    return int(np.subtract(high, low, dtype=np.int64).max())
