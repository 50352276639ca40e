"""Box coordinate conversions, IoU and one-to-one matching.

The canonical box is ``bbox_xyxy``: pixels of the original image, continuous and half-open,
so a single pixel at column 3, row 5 is ``[3, 5, 4, 6]`` and a box covering a whole
``W x H`` image is ``[0, 0, W, H]``. Every other convention exists only here and is named in
the function:

- ``norm1000``: integer grid 0..1000 relative to the original image (Qwen2-VL, Qwen3-VL,
  InternVL). ``x_norm = round(x / W * 1000)``, clipped to ``[0, 1000]``.
- ``norm1``: floats 0..1 relative to the original image (ms-swift ``bbox_type: norm1``).
- ``resized``: absolute pixels of the image after Qwen2.5-VL's processor resized it with
  :func:`smart_resize`; integers.
- ``florence_loc``: Florence-2 location bins 0..999 (tokens ``<loc_0>`` .. ``<loc_999>``).
  Quantisation floors ``x / (W / 1000)`` and clamps to 999; dequantisation returns the bin
  centre ``(bin + 0.5) * W / 1000`` (Florence2PostProcessor in transformers'
  ``processing_florence2.py``).
- ``coco_xywh``: ``[x, y, width, height]`` in pixels of the original image.
- ``percent``: ``[x, y, width, height]`` in percent (0..100) of the original image, as Label
  Studio stores rectangles.

All functions take one box ``(4,)`` or a batch ``(N, 4)`` and return ``(N, 4)`` arrays.
Rounding to integer grids is round-half-up (``floor(v + 0.5)``) so results do not depend on
banker's rounding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

NORM1000_MAX = 1000
FLORENCE_BINS = 1000

# Qwen2.5-VL processor settings as shipped in the model's preprocessor_config.json
# (min_pixels 3136, max_pixels 12845056, patch_size 14, merge_size 2).
QWEN25VL_FACTOR = 28
QWEN25VL_MIN_PIXELS = 3136
QWEN25VL_MAX_PIXELS = 12845056

ArrayLike = Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def as_boxes(boxes: ArrayLike | Any) -> np.ndarray:
    """Convert one box ``(4,)`` or a batch ``(N, 4)`` to a float64 ``(N, 4)`` array.

    Raises:
        ValueError: if the shape is not ``(4,)`` or ``(N, 4)`` or a value is not finite.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None, :]
    if array.ndim == 1 and array.shape[0] == 0:
        array = array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(
            f"boxes must have shape (4,) or (N, 4); got shape {array.shape}. "
            "Pass [x0, y0, x1, y1] or a list of such boxes."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"boxes contain NaN or infinite values: {array.tolist()}")
    return array


def _check_size(width: float, height: float, what: str = "image") -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"{what} width and height must be positive; got {width} x {height}")


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5).astype(np.int64)


def _scale(boxes: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    return boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float64)


# --- 0..1000 grid (Qwen2-VL, Qwen3-VL, InternVL) ------------------------------------------


def xyxy_to_norm1000(boxes_xyxy: ArrayLike, width: int, height: int) -> np.ndarray:
    """Convert pixel boxes of a ``width x height`` image to the 0..1000 integer grid.

    Returns:
        ``(N, 4)`` int64 array, clipped to ``[0, 1000]``.
    """
    _check_size(width, height)
    boxes = as_boxes(boxes_xyxy)
    grid = _round_half_up(_scale(boxes, NORM1000_MAX / width, NORM1000_MAX / height))
    return np.clip(grid, 0, NORM1000_MAX)


def norm1000_to_xyxy(boxes_norm1000: ArrayLike, width: int, height: int) -> np.ndarray:
    """Convert 0..1000 grid boxes back to pixel boxes of a ``width x height`` image.

    Values outside 0..1000 are kept (not clipped) so the caller can see out-of-image
    predictions. The round trip from pixels is exact within ``0.5 * width / 1000`` pixels.
    """
    _check_size(width, height)
    boxes = as_boxes(boxes_norm1000)
    return _scale(boxes, width / NORM1000_MAX, height / NORM1000_MAX)


# --- 0..1 floats -------------------------------------------------------------------------


def xyxy_to_norm1(boxes_xyxy: ArrayLike, width: int, height: int) -> np.ndarray:
    """Convert pixel boxes to floats relative to the image size (0..1)."""
    _check_size(width, height)
    return _scale(as_boxes(boxes_xyxy), 1.0 / width, 1.0 / height)


def norm1_to_xyxy(boxes_norm1: ArrayLike, width: int, height: int) -> np.ndarray:
    """Convert boxes relative to the image size (0..1) to pixel boxes."""
    _check_size(width, height)
    return _scale(as_boxes(boxes_norm1), float(width), float(height))


# --- Qwen2.5-VL: absolute pixels after the processor's resize -----------------------------


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Compute the ``(height, width)`` Qwen2.5-VL's image processor resizes an image to.

    Both sides become multiples of ``factor`` (``patch_size * merge_size``, 28 for
    Qwen2.5-VL), the pixel count lands within ``[min_pixels, max_pixels]`` and the aspect
    ratio is kept as closely as possible. This follows ``smart_resize`` in transformers'
    ``models/qwen2_vl/image_processing_qwen2_vl.py``, including Python's round-half-to-even
    in the first rounding step.

    NOTE: releases differ for very small images. The version followed here raises below
    ``factor``, other transformers releases raise below 10 px, and qwen-vl-utils raises
    the side to ``factor`` instead.

    Raises:
        ValueError: if a side is shorter than ``factor``, the aspect ratio exceeds 200, or
            the pixel limits are inconsistent.
    """
    if factor <= 0 or min_pixels <= 0 or max_pixels < min_pixels:
        raise ValueError(
            f"invalid resize settings: factor={factor}, min_pixels={min_pixels}, "
            f"max_pixels={max_pixels}; factor and min_pixels must be positive and "
            "max_pixels >= min_pixels"
        )
    if height < factor or width < factor:
        raise ValueError(
            f"image of height {height} and width {width} is smaller than the patch factor "
            f"{factor}; Qwen2.5-VL's processor rejects it"
        )
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be at most 200; got {height} x {width} "
            f"(ratio {max(height, width) / min(height, width):.1f})"
        )

    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = math.floor(height / beta / factor) * factor
        resized_width = math.floor(width / beta / factor) * factor
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def xyxy_to_resized(
    boxes_xyxy: ArrayLike, width: int, height: int, resized_width: int, resized_height: int
) -> np.ndarray:
    """Convert pixel boxes of the original image to integer pixels of the resized image.

    Returns:
        ``(N, 4)`` int64 array clipped to the resized image.
    """
    _check_size(width, height)
    _check_size(resized_width, resized_height, "resized image")
    boxes = as_boxes(boxes_xyxy)
    scaled = _round_half_up(_scale(boxes, resized_width / width, resized_height / height))
    upper = np.array([resized_width, resized_height, resized_width, resized_height])
    return np.clip(scaled, 0, upper)


def resized_to_xyxy(
    boxes_resized: ArrayLike, width: int, height: int, resized_width: int, resized_height: int
) -> np.ndarray:
    """Convert pixels of the resized image back to pixel boxes of the original image.

    The round trip from original pixels is exact within ``0.5 * width / resized_width``.
    """
    _check_size(width, height)
    _check_size(resized_width, resized_height, "resized image")
    boxes = as_boxes(boxes_resized)
    return _scale(boxes, width / resized_width, height / resized_height)


# --- Florence-2 location bins ------------------------------------------------------------


def xyxy_to_florence_loc(boxes_xyxy: ArrayLike, width: int, height: int) -> np.ndarray:
    """Quantise pixel boxes to Florence-2 location bins 0..999 (floor, then clamp)."""
    _check_size(width, height)
    boxes = as_boxes(boxes_xyxy)
    bins = np.floor(_scale(boxes, FLORENCE_BINS / width, FLORENCE_BINS / height))
    return np.clip(bins, 0, FLORENCE_BINS - 1).astype(np.int64)


def florence_loc_to_xyxy(boxes_loc: ArrayLike, width: int, height: int) -> np.ndarray:
    """Dequantise Florence-2 location bins to pixel boxes at the bin centres.

    The round trip from pixels is exact within half a bin, ``0.5 * width / 1000``.
    """
    _check_size(width, height)
    bins = as_boxes(boxes_loc)
    return _scale(bins + 0.5, width / FLORENCE_BINS, height / FLORENCE_BINS)


def florence_loc_tokens(boxes_loc: ArrayLike) -> list[str]:
    """Render location bins as Florence-2 token strings, one ``<loc_a>..<loc_d>`` per box."""
    bins = as_boxes(boxes_loc).astype(np.int64)
    if bins.size and (bins.min() < 0 or bins.max() >= FLORENCE_BINS):
        raise ValueError(f"Florence-2 location bins must be within 0..999; got {bins.tolist()}")
    return ["".join(f"<loc_{int(value)}>" for value in row) for row in bins]


# --- COCO and Label Studio ---------------------------------------------------------------


def xyxy_to_coco_xywh(boxes_xyxy: ArrayLike) -> np.ndarray:
    """Convert ``[x0, y0, x1, y1]`` pixel boxes to COCO ``[x, y, width, height]``."""
    boxes = as_boxes(boxes_xyxy)
    return np.column_stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]
    )


def coco_xywh_to_xyxy(boxes_xywh: ArrayLike) -> np.ndarray:
    """Convert COCO ``[x, y, width, height]`` to ``[x0, y0, x1, y1]`` pixel boxes."""
    boxes = as_boxes(boxes_xywh)
    return np.column_stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]]
    )


def xyxy_to_percent(boxes_xyxy: ArrayLike, width: int, height: int) -> np.ndarray:
    """Convert pixel boxes to Label Studio's ``[x, y, width, height]`` in percent."""
    _check_size(width, height)
    return _scale(xyxy_to_coco_xywh(boxes_xyxy), 100.0 / width, 100.0 / height)


def percent_to_xyxy(boxes_percent: ArrayLike, width: int, height: int) -> np.ndarray:
    """Convert Label Studio's ``[x, y, width, height]`` in percent to pixel boxes."""
    _check_size(width, height)
    xywh = _scale(as_boxes(boxes_percent), width / 100.0, height / 100.0)
    return coco_xywh_to_xyxy(xywh)


# --- IoU and matching --------------------------------------------------------------------


def box_areas(boxes_xyxy: ArrayLike) -> np.ndarray:
    """Return the area of each box; inverted boxes have area 0."""
    boxes = as_boxes(boxes_xyxy)
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    heights = np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    return widths * heights


def box_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """Compute the IoU of every box in ``boxes_a`` with every box in ``boxes_b``.

    Boxes are half-open ``xyxy`` in one coordinate space. Inverted or empty boxes have
    area 0, and a pair whose union is empty has IoU 0.

    Returns:
        ``(N, M)`` float64 array.
    """
    a = as_boxes(boxes_a)
    b = as_boxes(boxes_b)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0.0, None)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, 0.0)
    return iou


def match_boxes(
    boxes_pred: ArrayLike, boxes_gt: ArrayLike, iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """Match predicted to ground-truth boxes one-to-one.

    The assignment first maximises the number of pairs with IoU >= ``iou_threshold`` and,
    among those assignments, the summed IoU (Hungarian algorithm via
    ``scipy.optimize.linear_sum_assignment``).

    Returns:
        ``(pred_index, gt_index, iou)`` for every pair with IoU >= ``iou_threshold``.
    """
    pred = as_boxes(boxes_pred)
    gt = as_boxes(boxes_gt)
    if len(pred) == 0 or len(gt) == 0:
        return []
    iou = box_iou(pred, gt)
    # A hit is worth more than any IoU gain among non-hits, so the count comes first.
    weight = np.where(iou >= iou_threshold, 1.0 + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [
        (int(row), int(col), float(iou[row, col]))
        for row, col in zip(rows, cols, strict=True)
        if iou[row, col] >= iou_threshold
    ]


# --- Named coordinate spaces -------------------------------------------------------------

SPACES: tuple[str, ...] = (
    "pixels",
    "norm1000",
    "norm1",
    "resized",
    "florence-loc",
    "percent",
    "coco-xywh",
)


def space_to_xyxy(
    boxes: ArrayLike,
    space: str,
    width: int,
    height: int,
    resized_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Convert boxes in a named coordinate space to pixel ``xyxy`` of the original image.

    Args:
        boxes: ``(4,)`` or ``(N, 4)`` boxes in ``space``.
        space: one of :data:`SPACES`.
        width: original image width in pixels.
        height: original image height in pixels.
        resized_size: ``(resized_width, resized_height)``; required for ``resized``.

    Raises:
        ValueError: on an unknown space or a missing ``resized_size``.
    """
    if space == "pixels":
        return as_boxes(boxes)
    if space == "norm1000":
        return norm1000_to_xyxy(boxes, width, height)
    if space == "norm1":
        return norm1_to_xyxy(boxes, width, height)
    if space == "resized":
        if resized_size is None:
            raise ValueError("space 'resized' needs the resized image size")
        return resized_to_xyxy(boxes, width, height, *resized_size)
    if space == "florence-loc":
        return florence_loc_to_xyxy(boxes, width, height)
    if space == "percent":
        return percent_to_xyxy(boxes, width, height)
    if space == "coco-xywh":
        return coco_xywh_to_xyxy(boxes)
    raise ValueError(f"unknown coordinate space {space!r}; valid spaces: {', '.join(SPACES)}")


def xyxy_to_space(
    boxes_xyxy: ArrayLike,
    space: str,
    width: int,
    height: int,
    resized_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Convert pixel ``xyxy`` boxes of the original image to a named coordinate space.

    The inverse of :func:`space_to_xyxy`, within the rounding of the target space.
    """
    if space == "pixels":
        return as_boxes(boxes_xyxy)
    if space == "norm1000":
        return xyxy_to_norm1000(boxes_xyxy, width, height)
    if space == "norm1":
        return xyxy_to_norm1(boxes_xyxy, width, height)
    if space == "resized":
        if resized_size is None:
            raise ValueError("space 'resized' needs the resized image size")
        return xyxy_to_resized(boxes_xyxy, width, height, *resized_size)
    if space == "florence-loc":
        return xyxy_to_florence_loc(boxes_xyxy, width, height)
    if space == "percent":
        return xyxy_to_percent(boxes_xyxy, width, height)
    if space == "coco-xywh":
        return xyxy_to_coco_xywh(boxes_xyxy)
    raise ValueError(f"unknown coordinate space {space!r}; valid spaces: {', '.join(SPACES)}")
