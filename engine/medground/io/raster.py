"""Read 2D raster images and masks (PNG, JPEG, BMP, TIFF) into NumPy arrays.

Arrays are ``(H, W)`` for single-channel files and ``(H, W, C)`` otherwise, in the
file's own integer type (bool for 1-bit, uint8, uint16 or int32).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def colour_planes(array: np.ndarray) -> np.ndarray:
    """Return the colour channels of an ``(H, W, C)`` array as contiguous ``(3, H, W)`` planes.

    This costs one copy. After it, each pass over a channel reads contiguous memory,
    several times faster than the strided channels of the interleaved array, so the copy
    pays off when an array is read more than once.
    """
    return np.ascontiguousarray(np.moveaxis(array[:, :, :3], 2, 0))


def _channels(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    channels = np.moveaxis(array, axis, 0)
    return channels[0], channels[1], channels[2]


def channel_sum(array: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return the ``(H, W)`` sum of the three colour channels in an integer type wide enough.

    ``axis`` is the channel axis: -1 for ``(H, W, C)``, 0 for :func:`colour_planes`.
    Comparing this sum with ``3 * t`` decides ``mean > t`` exactly, without floats.
    """
    red, green, blue = _channels(array, axis)
    wide = np.uint16 if array.dtype in (np.uint8, np.bool_) else np.int64
    total = red.astype(wide)
    total += green
    total += blue
    return total


class GreyImage:
    """The grey values of an image, converted only where they are read.

    A grey ``(H, W)`` image is its own grey values. For a colour ``(H, W, C)`` image they
    are the mean of the RGB channels as float32 (the channel sum times ``float32(1/3)``);
    the channel sums are kept and only the windows read are scaled, so describing a few
    objects of a large image does not convert all of it. :meth:`value_range` gives the
    minimum and maximum over the whole image.
    """

    def __init__(self, array: np.ndarray):
        self.shape: tuple[int, int] = (int(array.shape[0]), int(array.shape[1]))
        self._colour = array.ndim == 3
        self._values = channel_sum(array) if self._colour else array

    def __getitem__(self, key: Any) -> np.ndarray:
        values = self._values[key]
        return self._scale(values) if self._colour else values

    def value_range(self) -> tuple[float, float]:
        """Return the minimum and maximum grey value of the whole image."""
        extremes = np.array([self._values.min(), self._values.max()])
        # Scaling by a positive factor keeps the order, even after float32 rounding.
        low, high = self._scale(extremes) if self._colour else extremes
        return float(low), float(high)

    @staticmethod
    def _scale(sums: np.ndarray) -> np.ndarray:
        return np.multiply(sums, np.float32(1 / 3), dtype=np.float32)


def channel_spread(array: np.ndarray, axis: int = -1) -> int:
    """Return the largest difference between colour channels of any pixel (0 for grey).

    That is the largest per-pixel maximum minus minimum of the three channels, which
    stays within the array's own unsigned type. ``axis`` is as in :func:`channel_sum`.
    """
    if array.ndim == 2:
        return 0
    red, green, blue = _channels(array, axis)
    high = np.maximum(red, green)
    np.maximum(high, blue, out=high)
    low = np.minimum(red, green)
    np.minimum(low, blue, out=low)
    if array.dtype.kind == "u":
        return int(np.subtract(high, low, out=high).max())
    return int(np.subtract(high, low, dtype=np.int64).max())
