"""Reorient volumes to RAS+ voxel axes and cut display-ready 2D planes from them.

A canonical volume has axes ``(X, Y, Z)`` where X increases toward the patient's right,
Y toward anterior and Z toward superior (nibabel's RAS+ "closest canonical" orientation).
Oblique volumes are flipped and transposed to the closest axes without resampling.

Planes are displayed in the radiological convention:

========  ================  ===================  ======================
plane     rows increase to  columns increase to  patient left is on
========  ================  ===================  ======================
axial     posterior (P)     patient left (L)     image right
coronal   inferior (I)      patient left (L)     image right
sagittal  inferior (I)      posterior (P)        (not in the plane)
========  ================  ===================  ======================

So axial images show anterior up and the patient's right on the image left, coronal and
sagittal images show superior up, and sagittal images show anterior on the image left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, io_orientation

from medground.config.volume import PlaneName

logger = logging.getLogger(__name__)

# Canonical axis that each plane's slice index runs along (0 = X, 1 = Y, 2 = Z).
PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

# Patient directions toward which (row, column) indices grow, per the table above.
PLANE_AXIS_CODES: dict[str, tuple[str, str]] = {
    "axial": ("P", "L"),
    "coronal": ("I", "L"),
    "sagittal": ("I", "P"),
}

# Obliquity above which a warning reports that axes are snapped without resampling.
_OBLIQUE_WARN_DEGREES = 1.0


@dataclass(frozen=True)
class VoxelData:
    """A voxel array as stored in its file, with the matrix that places it in the patient.

    Attributes:
        array: (I, J, K) voxels in the file's own axis order.
        affine: (4, 4) matrix from voxel indices (i, j, k, 1) to RAS+ millimetres.
        path: File (or DICOM series folder) the voxels come from.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path


def squeeze_to_3d(array: np.ndarray, path: Path, channel: int | None) -> np.ndarray:
    """Reduce an array with extra trailing axes to (I, J, K).

    Singleton axes after the third are dropped and 2D arrays gain a third axis of size 1.
    One remaining non-singleton fourth axis is a channel axis, from which ``channel``
    picks one; label maps pass ``channel=None`` because they must not have channels.

    Args:
        array: Array of 2 or more axes in file order.
        path: Source file, for messages.
        channel: Channel to keep, or None to reject channel axes.

    Returns:
        (I, J, K) array, a view of ``array`` where possible.
    """
    if array.ndim == 2:
        return array[:, :, np.newaxis]
    extra_axes = tuple(axis for axis in range(3, array.ndim) if array.shape[axis] == 1)
    squeezed = np.squeeze(array, axis=extra_axes) if extra_axes else array
    if squeezed.ndim == 3:
        return squeezed
    if squeezed.ndim == 4 and channel is not None:
        if channel >= squeezed.shape[3]:
            raise ValueError(
                f"{path}: volume.channel is {channel} but the image has "
                f"{squeezed.shape[3]} channels (shape {array.shape}); choose 0..."
                f"{squeezed.shape[3] - 1}"
            )
        return squeezed[:, :, :, channel]
    raise ValueError(
        f"{path}: expected a 3D volume (or 3D plus channels for images), got shape {array.shape}"
    )


def check_affine(affine: np.ndarray, path: Path) -> None:
    """Raise ValueError unless ``affine`` is a finite, invertible 4x4 voxel-to-RAS matrix.

    Args:
        affine: (4, 4) voxel-to-world matrix in RAS+ millimetres.
        path: File the affine comes from, for the error message.
    """
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: affine has shape {affine.shape}, expected (4, 4)")
    if not np.all(np.isfinite(affine)):
        raise ValueError(
            f"{path}: affine contains NaN or infinite values:\n{affine}\n"
            "Fix the header's orientation (sform/qform or space directions) and retry"
        )
    rank = np.linalg.matrix_rank(affine[:3, :3])
    if rank < 3:
        raise ValueError(
            f"{path}: affine is not invertible (rank {rank} of 3), so voxel axes cannot be "
            f"mapped to patient directions:\n{affine}\n"
            "Fix the header's orientation (sform/qform or space directions) and retry"
        )


def reorient_to_ras(
    array: np.ndarray, affine: np.ndarray, path: Path
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Flip and transpose a volume so that its axes are RAS+ (closest canonical).

    Args:
        array: (I, J, K) volume in the file's voxel order.
        affine: (4, 4) voxel-to-RAS+ matrix of ``array``.
        path: Source file, for messages.

    Returns:
        The (X, Y, Z) RAS+ array (a view of ``array`` where possible), the nibabel
        orientation ``ornt`` (row i gives the canonical axis that input axis i became and
        whether it was flipped) and the voxel spacing in mm along (X, Y, Z).
    """
    check_affine(affine, path)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {array.shape}")

    obliquity_degrees = np.degrees(nib.affines.obliquity(affine))
    if np.max(obliquity_degrees) > _OBLIQUE_WARN_DEGREES:
        logger.warning(
            "%s: volume is oblique by up to %.1f degrees; axes are snapped to the closest "
            "patient axes without resampling",
            path,
            float(np.max(obliquity_degrees)),
        )

    ornt = io_orientation(affine)
    canonical = apply_orientation(array, ornt)

    spacing_input = voxel_sizes(affine)
    spacing = [0.0, 0.0, 0.0]
    for input_axis, (canonical_axis, _flip) in enumerate(ornt):
        spacing[int(canonical_axis)] = float(spacing_input[input_axis])
    return canonical, ornt, (spacing[0], spacing[1], spacing[2])


def plane_slice_count(canonical_shape: tuple[int, ...], plane: PlaneName) -> int:
    """Return the number of slices of a canonical (X, Y, Z) volume in ``plane``."""
    return int(canonical_shape[PLANE_AXIS[plane]])


def plane_image(canonical: np.ndarray, plane: PlaneName, index: int) -> np.ndarray:
    """Cut one display-oriented plane from a canonical volume.

    Args:
        canonical: (X, Y, Z) RAS+ volume.
        plane: Plane to cut.
        index: Slice index along the plane's canonical axis.

    Returns:
        (H, W) contiguous copy, oriented as in the module table.
    """
    if plane == "axial":
        section = canonical[:, :, index]
    elif plane == "coronal":
        section = canonical[:, index, :]
    else:
        section = canonical[index, :, :]

    # Each section is (first axis, second axis) in RAS+ order. Transposing makes the second
    # axis the rows, and flipping both makes rows and columns grow toward P/I and L/P.
    return np.ascontiguousarray(section.T[::-1, ::-1])


def plane_spacing_mm(
    spacing_xyz: tuple[float, float, float], plane: PlaneName
) -> tuple[float, float]:
    """Return the (row, column) pixel spacing in mm of a plane cut by :func:`plane_image`."""
    spacing_x, spacing_y, spacing_z = spacing_xyz
    if plane == "axial":
        return spacing_y, spacing_x
    if plane == "coronal":
        return spacing_z, spacing_x
    return spacing_z, spacing_y


def source_slice_index(
    ornt: np.ndarray, canonical_shape: tuple[int, ...], plane: PlaneName, index: int
) -> tuple[int, int]:
    """Map a canonical slice index back to the file's own voxel array.

    Args:
        ornt: Orientation returned by :func:`reorient_to_ras`.
        canonical_shape: Shape of the canonical (X, Y, Z) volume.
        plane: Plane of the slice.
        index: Slice index along the plane's canonical axis.

    Returns:
        ``(axis, index)``: the input array axis the slice is perpendicular to and the
        slice's index along it.
    """
    canonical_axis = PLANE_AXIS[plane]
    for input_axis, (target_axis, flip) in enumerate(ornt):
        if int(target_axis) == canonical_axis:
            size = int(canonical_shape[canonical_axis])
            return input_axis, (size - 1 - index) if flip < 0 else index
    raise ValueError(
        f"orientation {ornt.tolist()} has no input axis for canonical axis {canonical_axis}"
    )
