"""Image evidence per target object: is the object visible in the image at all?

Two measures on the grey image, scaled to 0..1 by the image's own intensity range:

- ``evidence_cnr``: contrast-to-noise ratio between the object and a ring of background
  around it (the object dilated by :data:`RING_PX` pixels, minus the object):
  ``|mean_inside - mean_ring| / std_ring``.
- ``evidence_edge``: mean Sobel gradient magnitude on the object's boundary pixels,
  leaving out boundary pixels on the image border (a cut there is not an edge in the image).

Both are computed only for objects that a single or relational target describes.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from medground.io.raster import GreyImage
from medground.verify.columns import Column, register_columns

logger = logging.getLogger(__name__)

RING_PX = 5
# The ring's standard deviation is floored at this share of the intensity range, so a flat
# background (a synthetic image, a padded border) gives a large finite CNR, not a division by 0.
STD_FLOOR = 0.005
MIN_RING_PIXELS = 10

EVIDENCE_COLUMNS: dict[str, Column] = {
    "evidence_cnr": Column(
        pl.Float64,
        f"contrast-to-noise ratio of the target object against a {RING_PX}-px ring around it "
        "(null for multi, a flat image or an object without background around it)",
        3.0,
    ),
    "evidence_edge": Column(
        pl.Float64,
        "mean Sobel gradient on the target object's boundary, intensity scaled to 0..1 by the "
        "image's range (null for multi or a flat image)",
        0.1,
    ),
}
register_columns(EVIDENCE_COLUMNS)


def measure_evidence(
    grey: np.ndarray | GreyImage,
    mask_crop: np.ndarray,
    bbox_xyxy: tuple[int, int, int, int],
    value_range: tuple[float, float],
) -> tuple[float | None, float | None]:
    """Return ``(cnr, edge)`` of one object.

    Args:
        grey: the ``(H, W)`` grey image, or a :class:`GreyImage` that converts on reading.
        mask_crop: the object's ``(y1 - y0, x1 - x0)`` boolean mask inside its box.
        bbox_xyxy: the object's half-open box in image pixels.
        value_range: the image's minimum and maximum intensity.

    Returns:
        The contrast-to-noise ratio and the boundary gradient; each is None when it cannot
        be measured (a flat image, or fewer than ``MIN_RING_PIXELS`` background pixels).
    """
    low, high = value_range
    span = high - low
    if span <= 0:
        return None, None
    height, width = grey.shape
    x0, y0, x1, y1 = bbox_xyxy
    pad = RING_PX + 1
    wx0, wy0 = max(0, x0 - pad), max(0, y0 - pad)
    wx1, wy1 = min(width, x1 + pad), min(height, y1 + pad)
    window = (grey[wy0:wy1, wx0:wx1].astype(np.float32) - low) / span
    mask = np.zeros(window.shape, dtype=bool)
    mask[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] = mask_crop

    ring = dilate(mask, RING_PX) & ~mask
    cnr = None
    if int(ring.sum()) >= MIN_RING_PIXELS:
        around = window[ring]
        cnr = float(abs(window[mask].mean() - around.mean()) / max(around.std(), STD_FLOOR))

    boundary = mask & ~_erode(mask)
    rows, cols = np.nonzero(boundary)
    on_border = (rows + wy0 == 0) | (cols + wx0 == 0)
    on_border |= (rows + wy0 == height - 1) | (cols + wx0 == width - 1)
    rows, cols = rows[~on_border], cols[~on_border]
    edge = float(sobel_at(window, rows, cols).mean()) if rows.size else None
    return cnr, edge


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilate ``steps`` times with the 4-neighbourhood (pixels within taxicab distance).

    Equal to ``scipy.ndimage.binary_dilation(mask, iterations=steps)``; shifted ORs are
    faster on the small windows around single objects.
    """
    grown = mask.copy()
    for _ in range(steps):
        previous = grown.copy()
        grown[1:] |= previous[:-1]
        grown[:-1] |= previous[1:]
        grown[:, 1:] |= previous[:, :-1]
        grown[:, :-1] |= previous[:, 1:]
    return grown


def _erode(mask: np.ndarray) -> np.ndarray:
    """Erode with the 4-neighbourhood, treating pixels outside the window as foreground."""
    padded = np.pad(mask, 1, constant_values=True)
    return (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )


def sobel_at(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Return ``skimage.filters.sobel(image)[rows, cols]`` without filtering the whole image.

    Same kernels (divided by 4), the same mirrored edges, and the same magnitude
    ``sqrt((h**2 + v**2) / 2)``.
    """
    height, width = image.shape
    interior = rows.size == 0 or (
        rows.min() >= 1 and cols.min() >= 1 and rows.max() < height - 1 and cols.max() < width - 1
    )
    if interior:
        # Every neighbour lies inside the image: no mirrored edge is needed, so the
        # image is read in place (the object windows of measure_evidence always are).
        source, r, c = image, rows, cols
    else:
        source, r, c = np.pad(image, 1, mode="symmetric"), rows + 1, cols + 1

    def at(dr: int, dc: int) -> np.ndarray:
        return source[r + dr, c + dc].astype(np.float64)

    horizontal = (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1) - at(1, -1) - 2 * at(1, 0) - at(1, 1)) / 4
    vertical = (at(-1, -1) + 2 * at(0, -1) + at(1, -1) - at(-1, 1) - 2 * at(0, 1) - at(1, 1)) / 4
    return np.sqrt((horizontal**2 + vertical**2) / 2)
