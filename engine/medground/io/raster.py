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
    sha256: str

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.array.shape[1])


def read_raster(path: Path, keep_palette_indices: bool = False) -> Raster:
    """Decode an image file completely.

    Args:
        path: the file.
        keep_palette_indices: for palette ('P') images, return the indices instead of colours
            (label maps saved as indexed PNG store class ids as indices).

    Raises:
        RasterError: when the file is missing, not an image, or truncated.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise RasterError(f"{path}: file not found") from exc
    except OSError as exc:
        raise RasterError(f"{path}: cannot read file ({exc.strerror})") from exc
    digest = hashlib.sha256(data).hexdigest()
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


def to_grey(array: np.ndarray) -> np.ndarray:
    """Return an ``(H, W)`` view of an image: the mean of RGB channels, or the array itself."""
    if array.ndim == 2:
        return array
    return array.mean(axis=2)


def channel_spread(array: np.ndarray) -> int:
    """Return the largest difference between colour channels of any pixel (0 for grey)."""
    if array.ndim == 2:
        return 0
    values = array.astype(np.int32)
    return int((values.max(axis=2) - values.min(axis=2)).max())
