"""Masks to objects: connected components, tight boxes and per-object measurements.

All arrays are ``(H, W)``. Boxes are ``bbox_xyxy`` in pixels of the original image,
continuous and half-open: a single pixel at column 3, row 5 is ``[3, 5, 4, 6]``.
Centroids use the same continuous frame, so that pixel's centroid is ``(3.5, 5.5)``.

Cheap measurements (area, box, centroid) are computed for every component at once from
the label image with ``np.bincount``; the costly shape descriptors (eccentricity,
orientation, solidity, circularity) are computed per object, only for objects that a
target refers to (:func:`shape_descriptors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import label as label_components

# Above this many histogram cells (image rows plus columns, times components) the
# per-row and per-column label histograms would take more memory than index arrays.
_MAX_HISTOGRAM_CELLS = 4_000_000


@dataclass(frozen=True)
class Components:
    """Connected components of one binary mask, measured together.

    ``bbox_xyxy`` is ``(N, 4)`` int64; ``area`` ``(N,)`` int64; ``centroid_xy`` ``(N, 2)``
    float64, all in image pixels. ``labels`` is an int32 label image (0 = background)
    covering the image from ``origin_xy`` on: it may be cropped to the mask's foreground,
    so index it through :meth:`labels_in`. Component ``i`` has the value ``label_ids[i]``
    in it; other values belong to components that were dropped (:func:`keep_components`).
    """

    labels: np.ndarray
    area: np.ndarray
    bbox_xyxy: np.ndarray
    centroid_xy: np.ndarray
    origin_xy: tuple[int, int]
    label_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.area.shape[0])

    def labels_in(self, bbox_xyxy: tuple[int, int, int, int]) -> np.ndarray:
        """Return the label image inside a box given in image pixels."""
        x0, y0, x1, y1 = bbox_xyxy
        ox, oy = self.origin_xy
        return self.labels[y0 - oy : y1 - oy, x0 - ox : x1 - ox]

    def foreground(self) -> np.ndarray:
        """Return the kept components as a boolean image over the extent of ``labels``."""
        if len(self) == int(self.labels.max(initial=0)):
            return self.labels > 0
        return np.isin(self.labels, self.label_ids)


def foreground_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Return the row and column slices of a mask's foreground, or None for an empty mask."""
    row_hits = np.flatnonzero(mask.any(axis=1))
    if row_hits.size == 0:
        return None
    col_hits = np.flatnonzero(mask.any(axis=0))
    rows = slice(int(row_hits[0]), int(row_hits[-1]) + 1)
    cols = slice(int(col_hits[0]), int(col_hits[-1]) + 1)
    return rows, cols


def find_components(mask: np.ndarray, connectivity: int) -> Components:
    """Label the connected components of a boolean ``(H, W)`` mask and measure each.

    Args:
        mask: boolean foreground, ``(H, W)``.
        connectivity: 1 for 4-connected, 2 for 8-connected neighbourhoods.
    """
    # Label only the foreground's bounding region: most lesion masks cover a small part
    # of the image, and every later pass then runs over the crop.
    box = foreground_box(mask)
    if box is None:
        return measure_labels(np.zeros((0, 0), np.int32), 0)
    rows, cols = box
    labels, count = label_components(mask[rows, cols], connectivity=connectivity, return_num=True)
    origin_xy = (cols.start, rows.start)
    return measure_labels(labels.astype(np.int32, copy=False), count, origin_xy=origin_xy)


def measure_labels(
    labels: np.ndarray, count: int, origin_xy: tuple[int, int] = (0, 0)
) -> Components:
    """Measure area, tight box and centroid of labels ``1..count`` in one pass each.

    ``origin_xy`` is the image position of ``labels[0, 0]``; results are in image pixels.
    Every label ``1..count`` must occur in ``labels``.
    """
    ids = np.arange(1, count + 1, dtype=np.int64)
    if count == 0:
        return Components(
            labels, np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros((0, 2)),
            origin_xy, ids,
        )
    ox, oy = origin_xy
    if count == 1:
        return _measure_single(labels, origin_xy)
    height, width = labels.shape
    bins = count + 1
    if (height + width) * bins <= _MAX_HISTOGRAM_CELLS:
        # Label histograms per row and per column, each from one bincount over a combined
        # key. Areas and coordinate sums come from small matrix products, and each box
        # edge is the first or last row or column where a label's count is non-zero.
        row_keys = (np.arange(height, dtype=np.int64)[:, None] * bins + labels).ravel()
        per_row = np.bincount(row_keys, minlength=height * bins).reshape(height, bins)[:, 1:]
        col_keys = (np.arange(width, dtype=np.int64)[None, :] * bins + labels).ravel()
        per_col = np.bincount(col_keys, minlength=width * bins).reshape(width, bins)[:, 1:]
        area = per_row.sum(axis=0)
        sum_x = np.arange(width) @ per_col
        sum_y = np.arange(height) @ per_row
        in_row, in_col = per_row > 0, per_col > 0
        boxes = np.stack(
            [
                in_col.argmax(axis=0),
                in_row.argmax(axis=0),
                width - in_col[::-1].argmax(axis=0),
                height - in_row[::-1].argmax(axis=0),
            ],
            axis=1,
        ).astype(np.int64) + np.array([ox, oy, ox, oy])
    else:
        # Thousands of components: index arrays of the foreground cost less memory.
        flat = labels.ravel()
        foreground = np.flatnonzero(flat)
        values = flat[foreground]
        rows, cols = np.divmod(foreground, width)
        area = np.bincount(values, minlength=bins)[1:]
        sum_x = np.bincount(values, weights=cols, minlength=bins)[1:]
        sum_y = np.bincount(values, weights=rows, minlength=bins)[1:]
        slices = ndimage.find_objects(labels, max_label=count)
        boxes = np.array(
            [[c.start + ox, r.start + oy, c.stop + ox, r.stop + oy] for r, c in slices],
            np.int64,
        )
    centroid = np.stack([sum_x / area + 0.5 + ox, sum_y / area + 0.5 + oy], axis=1)
    return Components(labels, area.astype(np.int64), boxes, centroid, origin_xy, ids)


def _measure_single(labels: np.ndarray, origin_xy: tuple[int, int]) -> Components:
    """Measure one label from row and column projections (no per-pixel index arrays)."""
    foreground = labels > 0
    row_counts = np.count_nonzero(foreground, axis=1)
    col_counts = np.count_nonzero(foreground, axis=0)
    area = int(row_counts.sum())
    rows = np.flatnonzero(row_counts)
    cols = np.flatnonzero(col_counts)
    ox, oy = origin_xy
    cx = float(col_counts @ np.arange(col_counts.size)) / area + 0.5 + ox
    cy = float(row_counts @ np.arange(row_counts.size)) / area + 0.5 + oy
    box = [int(cols[0]) + ox, int(rows[0]) + oy, int(cols[-1]) + 1 + ox, int(rows[-1]) + 1 + oy]
    return Components(
        labels,
        np.array([area], np.int64),
        np.array([box], np.int64),
        np.array([[cx, cy]]),
        origin_xy,
        np.array([1], np.int64),
    )


def keep_components(components: Components, keep: np.ndarray) -> Components:
    """Return the components where ``keep`` is true; the label image is shared, not copied."""
    keep = np.asarray(keep, bool)
    if keep.all():
        return components
    return Components(
        components.labels,
        components.area[keep],
        components.bbox_xyxy[keep],
        components.centroid_xy[keep],
        components.origin_xy,
        components.label_ids[keep],
    )


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a boolean ``(H, W)`` mask: background not 4-connected to the border.

    Gives the same result as ``scipy.ndimage.binary_fill_holes`` with its default
    structure, with one labelling pass instead of iterated dilations. Only the mask's
    bounding box is labelled: all background outside it reaches the image border, so a
    background pixel inside it reaches the image border exactly when it reaches the
    box's border.
    """
    filled = mask.copy()
    bounds = foreground_box(mask)
    if bounds is None:
        return filled
    box = filled[bounds]
    background, count = ndimage.label(~box)
    if count == 0:
        return filled
    border = np.concatenate(
        [background[0], background[-1], background[:, 0], background[:, -1]]
    )
    outside = np.zeros(count + 1, bool)
    outside[border] = True
    box |= ~outside[background]
    return filled


def union_box(boxes: np.ndarray) -> np.ndarray:
    """Return the tight box around ``(N, 4)`` boxes."""
    return np.array(
        [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()], np.int64
    )


@dataclass(frozen=True)
class ShapeDescriptors:
    """Shape of one object: eccentricity and solidity in [0, 1], orientation in degrees.

    ``orientation_deg`` is the angle of the major axis from the image x axis, in
    ``[-90, 90)``, positive when the axis turns from +x towards +y (down the image).
    ``circularity`` is ``4*pi*area / perimeter**2`` with the perimeter estimated from the
    count of pixel edges scaled by pi/4, capped at 1.
    """

    eccentricity: float
    orientation_deg: float
    solidity: float
    circularity: float
    perimeter_px: float


def shape_descriptors(object_mask: np.ndarray) -> ShapeDescriptors:
    """Measure the shape of a boolean ``(h, w)`` crop holding one object.

    Moments come from matrix products of the crop with coordinate vectors, so no
    per-pixel index arrays are built.
    """
    weights = object_mask.astype(np.float64)
    row_counts = weights.sum(axis=1)
    col_counts = weights.sum(axis=0)
    area = float(row_counts.sum())
    if area == 0:
        raise ValueError("shape_descriptors needs a non-empty mask")

    # Second central moments of the pixel squares (each pixel adds 1/12 of variance).
    x = np.arange(object_mask.shape[1]) + 0.5
    y = np.arange(object_mask.shape[0]) + 0.5
    mean_x = float(col_counts @ x) / area
    mean_y = float(row_counts @ y) / area
    mu20 = float(col_counts @ (x - mean_x) ** 2) / area + 1 / 12
    mu02 = float(row_counts @ (y - mean_y) ** 2) / area + 1 / 12
    mu11 = float((y - mean_y) @ weights @ (x - mean_x)) / area
    spread = math.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    major = (mu20 + mu02) / 2 + spread
    minor = (mu20 + mu02) / 2 - spread
    eccentricity = math.sqrt(max(0.0, 1 - minor / major)) if major > 0 else 0.0
    orientation = math.degrees(0.5 * math.atan2(2 * mu11, mu20 - mu02))
    if orientation >= 90:
        orientation -= 180

    padded = np.pad(object_mask, 1)
    edges = int(np.count_nonzero(padded[:, 1:] != padded[:, :-1]))
    edges += int(np.count_nonzero(padded[1:, :] != padded[:-1, :]))
    perimeter = edges * math.pi / 4
    circularity = min(1.0, 4 * math.pi * area / perimeter**2) if perimeter > 0 else 0.0

    return ShapeDescriptors(
        eccentricity=eccentricity,
        orientation_deg=orientation,
        solidity=_solidity(object_mask, area),
        circularity=circularity,
        perimeter_px=perimeter,
    )


def _solidity(object_mask: np.ndarray, area: float) -> float:
    """Pixel area over the area of the convex hull of the pixel squares' corners.

    Every pixel lies between the first and last pixel of its row, so the corners of
    those two pixels per row span the same hull as all pixels. Of those, only the
    corners that extend their side past every row above or every row below can be
    hull vertices (:func:`_outward`); the others are left out before Qhull runs.
    """
    line_rows = np.flatnonzero(object_mask.any(axis=1))
    lines = object_mask[line_rows] if line_rows.size < object_mask.shape[0] else object_mask
    width = object_mask.shape[1]
    left = lines.argmax(axis=1)
    right = width - lines[:, ::-1].argmax(axis=1)
    keep_left = _outward(left)
    keep_right = _outward(-right)
    rows_left, rows_right = line_rows[keep_left], line_rows[keep_right]
    left, right = left[keep_left], right[keep_right]
    corners = np.concatenate(
        [
            np.stack([left, rows_left], 1),
            np.stack([left, rows_left + 1], 1),
            np.stack([right, rows_right], 1),
            np.stack([right, rows_right + 1], 1),
        ]
    )
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:
        return 1.0
    return float(min(1.0, area / hull_area)) if hull_area > 0 else 1.0


def _outward(edge: np.ndarray) -> np.ndarray:
    """Mark the rows whose ``edge`` value is below that of every row above or below it.

    A row's edge point that some row above and some row below reach or pass lies inside
    the segment between those two points, so it cannot be a vertex of the hull.
    """
    big = np.iinfo(np.int64).max
    edge = edge.astype(np.int64)
    above = np.concatenate([[big], np.minimum.accumulate(edge)[:-1]])
    below = np.concatenate([np.minimum.accumulate(edge[::-1])[::-1][1:], [big]])
    return (edge < above) | (edge < below)
