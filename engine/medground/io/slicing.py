"""Shared steps that turn voxel data into 2D slices: label ids, display scaling, selection.

The format readers (NIfTI, NRRD, DICOM, npz) differ only in how they load arrays and
geometry. They all pass through the functions here, so label checks, intensity scaling
and slice choice behave the same for every format.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from medground.config.volume import PlaneName, VolumeConfig
from medground.store import atomic_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeSlice:
    """One 2D slice of a volume (or one image of a stack), ready for the 2D pipeline.

    Attributes:
        image: (H, W) uint8 display-ready image (windowed or scaled). Colour stacks
            (``npz``/``npy`` with three channels) give (H, W, 3) uint8 RGB instead.
        labels: (H, W) int32 label ids; 0 is background.
        plane: Plane of the slice, or None for stacks without patient orientation.
        index: Slice index in the source's own voxel array, along ``index_axis``. For
            DICOM series the array is the series sorted by position along the slice
            normal; for stacks it is the position in the stack.
        index_axis: Axis of the source voxel array that ``index`` runs along.
        spacing_mm: (row, column) pixel spacing in mm, or None when the source has none.
        patient_left_on: ``"image_right"`` for axial and coronal slices (radiological
            convention); None for sagittal slices and stacks.
        axis_codes: Patient directions toward which (row, column) indices grow, e.g.
            ``("P", "L")`` for axial slices; None for stacks.
        source_image: Image file, or folder of a DICOM series.
        source_labels: Label map file (NIfTI, NRRD, DICOM SEG or the bundle itself).
        class_names: Label id to class name for the ids this source declares.
        selected_for: Label ids that made the strategy choose this slice.
        meta: Whitelisted DICOM attributes (keyword to JSON value); empty for other formats.
    """

    image: np.ndarray
    labels: np.ndarray
    plane: PlaneName | None
    index: int
    index_axis: int
    spacing_mm: tuple[float, float] | None
    patient_left_on: Literal["image_right"] | None
    axis_codes: tuple[str, str] | None
    source_image: Path
    source_labels: Path
    class_names: Mapping[int, str]
    selected_for: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeCase:
    """One case found by a discovery helper: what to pass to ``iter_volume_slices``.

    Attributes:
        case_id: Readable, stable case name (nnU-Net case identifier, series folder or
            bundle stem).
        image_path: Image file, DICOM series folder or bundle.
        label_path: Label file, DICOM SEG file or bundle.
    """

    case_id: str
    image_path: Path
    label_path: Path


@dataclass(frozen=True)
class VolumeDiscovery:
    """Cases found under a dataset root, and files that could not be paired."""

    cases: tuple[VolumeCase, ...]
    unpaired: tuple[Path, ...] = ()


def labels_to_ids(
    raw: np.ndarray, class_names: Mapping[int, str], tolerance: float, path: Path
) -> np.ndarray:
    """Convert a label map to int32 ids, rejecting values that match no declared id.

    Float label maps are rounded to the nearest integer when they lie within
    ``tolerance`` of it. Integer label maps are only checked.

    Args:
        raw: Label map of any shape and numeric dtype, in the file's voxel order.
        class_names: Declared ids (0, background, is always allowed).
        tolerance: Maximum distance between a float value and its nearest integer.
        path: Label file, named in error messages.

    Returns:
        int32 array of the same shape as ``raw``.
    """
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"{path}: label map has dtype {raw.dtype}; expected integers or floats")

    if raw.ndim < 2:
        raise ValueError(f"{path}: label map has shape {raw.shape}; expected 2 or more axes")

    # Convert slab by slab along the first axis to keep the peak memory near one copy.
    ids = np.empty(raw.shape, dtype=np.int32)
    present: set[int] = set()
    for slab_index in range(raw.shape[0]):
        slab = np.asarray(raw[slab_index])
        if slab.dtype.kind == "f":
            ids[slab_index] = _round_float_labels(slab, tolerance, path, slab_index)
        else:
            ids[slab_index] = _check_integer_range(slab, path)
        present.update(np.unique(ids[slab_index]).tolist())

    allowed = set(class_names) | {0}
    unknown = sorted(value for value in present if value not in allowed)
    if unknown:
        raise ValueError(
            f"{path}: label values {unknown[:10]} match no declared id; declared "
            f"{dict(sorted(class_names.items()))} (0 is background). Add them to "
            "volume.labels or fix the label map"
        )
    return ids


def _round_float_labels(
    slab: np.ndarray, tolerance: float, path: Path, slab_index: int
) -> np.ndarray:
    if not np.all(np.isfinite(slab)):
        bad = np.argwhere(~np.isfinite(slab))[0]
        raise ValueError(
            f"{path}: label map has a NaN or infinite value at voxel "
            f"{(slab_index, *map(int, bad))}; fix the label map"
        )
    rounded = np.rint(slab)
    distance = np.abs(slab - rounded)
    if np.any(distance > tolerance):
        bad = np.unravel_index(int(np.argmax(distance)), slab.shape)
        value = float(slab[bad])
        raise ValueError(
            f"{path}: label value {value!r} at voxel {(slab_index, *map(int, bad))} lies "
            f"between ids ({float(distance[bad]):.4g} from {int(rounded[bad])}, tolerance "
            f"{tolerance}); the label map may have been resampled with interpolation. "
            "Fix it or raise volume.label_tolerance"
        )
    return _check_integer_range(rounded, path).astype(np.int32)


def _check_integer_range(slab: np.ndarray, path: Path) -> np.ndarray:
    info = np.iinfo(np.int32)
    if slab.size and (slab.min() < info.min or slab.max() > info.max):
        raise ValueError(
            f"{path}: label values {slab.min()}..{slab.max()} exceed the int32 range; "
            "fix the label map"
        )
    return slab


def check_finite(image: np.ndarray, path: Path) -> None:
    """Raise ValueError naming the count of NaN or infinite voxels in a float image."""
    if image.dtype.kind != "f":
        return
    non_finite = int(np.count_nonzero(~np.isfinite(image)))
    if non_finite:
        raise ValueError(
            f"{path}: image has {non_finite} NaN or infinite voxels of {image.size}; "
            "replace them (for example with numpy.nan_to_num) or exclude this case"
        )


def scale_to_uint8(
    image: np.ndarray, config: VolumeConfig, path: Path, *, where: str = ""
) -> np.ndarray:
    """Map intensities to display-ready uint8 with the configured window or percentiles.

    Values below the window (or the low percentile) become 0 and values above it 255.
    Without ``window`` or ``percentile``, only uint8 images pass, unchanged.

    Args:
        image: Array of any shape (a whole volume, so that all its slices share one
            scaling, or a single stack image).
        config: Supplies ``window``, ``percentile`` and ``percentile_of``.
        path: Image file, named in error messages.
        where: Extra location for messages, e.g. ``" image 12"``.

    Returns:
        uint8 array of the same shape.
    """
    window = config.window_level_width()
    if window is not None:
        level, width = window
        lower = level - width / 2.0
    elif config.percentile is not None:
        lower, upper = _percentile_range(image, config, path, where)
        width = upper - lower
    elif image.dtype == np.uint8:
        return image
    else:
        raise ValueError(
            f"{path}{where}: image has dtype {image.dtype}, so it needs a display scaling: "
            "set volume.window (CT: lung, soft_tissue, bone, brain or {level, width}) or "
            "volume.percentile (MRI, e.g. [0.5, 99.5])"
        )

    scaled = np.empty(image.shape, dtype=np.uint8)
    for slab_index in range(image.shape[0]):
        slab = np.asarray(image[slab_index], dtype=np.float32)
        normalised = np.clip((slab - lower) / width, 0.0, 1.0)
        scaled[slab_index] = np.rint(normalised * 255.0).astype(np.uint8)
    return scaled


def _percentile_range(
    image: np.ndarray, config: VolumeConfig, path: Path, where: str
) -> tuple[float, float]:
    if config.percentile is None:
        raise ValueError("percentile scaling requested without volume.percentile")
    values = image[image != 0] if config.percentile_of == "nonzero" else image
    if values.size == 0:
        raise ValueError(
            f"{path}{where}: image has no non-zero voxels, so percentile_of 'nonzero' has "
            "nothing to measure; use percentile_of 'volume' or exclude this case"
        )
    low, high = np.percentile(values, config.percentile)
    if not high > low:
        raise ValueError(
            f"{path}{where}: percentiles {list(config.percentile)} are both {float(low)!r}; "
            "the image is constant over the measured voxels. Exclude it or use a window"
        )
    return float(low), float(high)


def select_slices(
    label_slices: Iterable[tuple[int, np.ndarray]],
    pixel_area_mm2: float,
    config: VolumeConfig,
    path: Path,
) -> dict[int, tuple[int, ...]]:
    """Choose slices with the configured strategy.

    Args:
        label_slices: ``(index, labels)`` pairs in index order; ``labels`` is (H, W)
            int32 with non-negative ids.
        pixel_area_mm2: Area of one pixel in mm² (1.0 for stacks without spacing).
        config: Supplies ``strategy``, ``k`` and ``min_object_mm2``.
        path: Label source, for log messages.

    Returns:
        Chosen slice index to the label ids it was chosen for, in ascending index order.
    """
    present: dict[int, tuple[int, ...]] = {}
    best_area: dict[int, tuple[int, int]] = {}

    for index, labels in label_slices:
        counts = np.bincount(labels.ravel())
        eligible: list[int] = []
        for label_id in np.flatnonzero(counts).tolist():
            if label_id == 0:
                continue
            area_px = int(counts[label_id])
            if not _has_large_object(labels, label_id, area_px, pixel_area_mm2, config):
                continue
            eligible.append(label_id)
            # Ties keep the lowest index because only a strictly larger area replaces it.
            if area_px > best_area.get(label_id, (-1, 0))[1]:
                best_area[label_id] = (index, area_px)
        if eligible:
            present[index] = tuple(eligible)

    chosen: dict[int, list[int]] = {}
    if config.strategy == "largest_per_label":
        for label_id, (index, _area) in sorted(best_area.items()):
            chosen.setdefault(index, []).append(label_id)
    elif config.strategy == "every_kth":
        step = config.k or 1
        for index, label_ids in present.items():
            if index % step == 0:
                chosen[index] = list(label_ids)
    else:
        chosen = {index: list(label_ids) for index, label_ids in present.items()}

    if not chosen:
        logger.warning(
            "%s: no slice has a labelled object of at least %g mm², so it yields no slices",
            path,
            config.min_object_mm2,
        )
    else:
        logger.debug(
            "%s: %s chose %d of %d slices with foreground",
            path,
            config.strategy,
            len(chosen),
            len(present),
        )
    return {index: tuple(chosen[index]) for index in sorted(chosen)}


def _has_large_object(
    labels: np.ndarray,
    label_id: int,
    area_px: int,
    pixel_area_mm2: float,
    config: VolumeConfig,
) -> bool:
    threshold = config.min_object_mm2
    if threshold <= 0:
        return True
    if area_px * pixel_area_mm2 < threshold:
        return False

    components, count = ndimage.label(labels == label_id)
    largest_px = int(np.bincount(components.ravel())[1:].max()) if count else 0
    return largest_px * pixel_area_mm2 >= threshold


def save_slice_png(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a slice image as PNG, creating parent folders; the file appears atomically.

    Args:
        image: (H, W) uint8 grayscale or (H, W, 3) uint8 RGB.
        path: Destination file.

    Returns:
        The destination path.
    """
    destination = Path(path)
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"cannot save {destination}: expected (H, W) or (H, W, 3) uint8, got "
            f"{image.shape} {image.dtype}; scale it with scale_to_uint8 first"
        )

    with atomic_path(destination) as temporary:
        Image.fromarray(image).save(temporary, format="PNG")
    return destination
