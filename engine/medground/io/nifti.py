"""Read NIfTI and NRRD files into voxel arrays with voxel-to-RAS+ affines."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medground.io.orientation import VoxelData

logger = logging.getLogger(__name__)

# Sign flips that turn each NRRD world space into RAS+ (x, y, z).
_NRRD_SPACE_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")


def read_nifti(path: Path) -> VoxelData:
    """Read a NIfTI-1 or NIfTI-2 file without loading it twice.

    The array keeps its stored dtype unless the header sets a scale slope, in which case
    nibabel returns floats. The affine is nibabel's best affine (sform, else qform).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        Voxels of shape (I, J, K, ...) in file order with their RAS+ affine.
    """
    try:
        image = nib.load(path)
    except ImageFileError as exc:
        raise ValueError(f"{path}: not a readable NIfTI file ({exc}); check the file") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(
            f"{path}: nibabel read a {type(image).__name__}, not NIfTI; convert the file to "
            "NIfTI or use the matching volume.format"
        )
    array = np.asanyarray(image.dataobj)
    logger.debug("%s: read %s %s", path, array.shape, array.dtype)
    return VoxelData(array=array, affine=np.asarray(image.affine, dtype=np.float64), path=path)


def read_nrrd(path: Path) -> VoxelData:
    """Read a NRRD file and build its RAS+ affine from ``space`` and ``space directions``.

    Non-spatial axes (a ``none`` space direction, e.g. channels) move to the end so that
    the first three axes are spatial.

    Args:
        path: ``.nrrd`` file, or ``.nhdr`` header with detached data.

    Returns:
        Voxels of shape (I, J, K, ...) with their RAS+ affine.
    """
    try:
        array, header = nrrd.read(str(path))
    except nrrd.NRRDError as exc:
        raise ValueError(f"{path}: not a readable NRRD file ({exc}); check the file") from exc

    space = str(header.get("space", "")).lower()
    if space not in _NRRD_SPACE_TO_RAS:
        raise ValueError(
            f"{path}: NRRD space {header.get('space')!r} does not name patient directions; "
            f"expected one of {sorted(_NRRD_SPACE_TO_RAS)}. Re-save the file with a "
            "patient space (for example from 3D Slicer)"
        )
    directions = header.get("space directions")
    if directions is None:
        raise ValueError(
            f"{path}: NRRD header has no 'space directions', so voxel axes cannot be mapped "
            "to patient directions; re-save the file with its geometry"
        )

    directions = np.asarray(directions, dtype=np.float64)
    spatial_axes = [axis for axis in range(array.ndim) if np.all(np.isfinite(directions[axis]))]
    other_axes = [axis for axis in range(array.ndim) if axis not in spatial_axes]
    if len(spatial_axes) != 3:
        raise ValueError(
            f"{path}: NRRD has {len(spatial_axes)} spatial axes (space directions "
            f"{directions.tolist()}); expected 3"
        )
    array = np.transpose(array, spatial_axes + other_axes)

    flips = np.asarray(_NRRD_SPACE_TO_RAS[space])
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = (directions[spatial_axes].T) * flips[:, np.newaxis]
    affine[:3, 3] = origin * flips
    logger.debug("%s: read %s %s in space %s", path, array.shape, array.dtype, space)
    return VoxelData(array=array, affine=affine, path=path)


def read_voxel_file(path: Path) -> VoxelData:
    """Read a NIfTI or NRRD file, chosen by its suffix."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(NRRD_SUFFIXES):
        return read_nrrd(path)
    raise ValueError(
        f"{path}: unsupported volume file suffix; expected one of "
        f"{list(NIFTI_SUFFIXES + NRRD_SUFFIXES)}"
    )
