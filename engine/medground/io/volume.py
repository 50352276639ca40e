"""Turn 3D volumes (and stacks of 2D images) into 2D slices for the 2D pipeline.

:func:`iter_volume_slices` reads one image volume and its label map, reorients both to
RAS+ from the affine (or DICOM direction cosines), scales intensities to uint8 once per
volume, chooses slices with the configured strategy and yields them one by one. Only one
volume is in memory at a time, provided the caller reads the next case after this
generator ends.

Example:
    >>> config = VolumeConfig(format="nifti", labels={1: "necrosis"}, percentile=(0.5, 99.5))
    >>> for item in iter_volume_slices(image_path, label_path, config):
    ...     save_slice_png(item.image, out / f"{item.plane}_{item.index:03d}.png")
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

from medground.config.volume import (
    CT_WINDOW_PRESETS,
    DEFAULT_DICOM_TAGS,
    NpzConfig,
    VolumeConfig,
    WindowLevel,
)
from medground.io.nifti import read_voxel_file
from medground.io.orientation import (
    PLANE_AXIS_CODES,
    VoxelData,
    check_affine,
    plane_image,
    plane_slice_count,
    plane_spacing_mm,
    reorient_to_ras,
    source_slice_index,
    squeeze_to_3d,
)
from medground.io.slicing import (
    VolumeCase,
    VolumeDiscovery,
    VolumeSlice,
    check_finite,
    labels_to_ids,
    save_slice_png,
    scale_to_uint8,
    select_slices,
)

__all__ = [
    "CT_WINDOW_PRESETS",
    "DEFAULT_DICOM_TAGS",
    "NpzConfig",
    "VolumeCase",
    "VolumeConfig",
    "VolumeDiscovery",
    "VolumeSlice",
    "WindowLevel",
    "discover_volume_cases",
    "iter_volume_slices",
    "save_slice_png",
]

logger = logging.getLogger(__name__)

# Maximum difference between the image and label affines (mm, or mm per voxel) that
# counts as the same grid. Larger differences are logged as a warning.
_AFFINE_TOLERANCE = 1e-3


@dataclass
class _CanonicalVolume:
    """One volume after loading: display-ready and reoriented to RAS+."""

    image: np.ndarray  # (X, Y, Z) uint8
    labels: np.ndarray  # (X, Y, Z) int32
    ornt: np.ndarray
    spacing_xyz: tuple[float, float, float]
    class_names: dict[int, str]
    meta: dict[str, Any] = field(default_factory=dict)


def iter_volume_slices(
    image_path: str | Path, label_path: str | Path, config: VolumeConfig
) -> Iterator[VolumeSlice]:
    """Read one image volume and its label map and yield the chosen 2D slices.

    Args:
        image_path: Image file (NIfTI, NRRD, nnU-Net channel file, ``.npy``), DICOM
            series folder, or ``.npz`` bundle.
        label_path: Label map file, DICOM SEG file, or the same ``.npz`` bundle.
        config: The manifest's ``volume:`` block.

    Yields:
        Slices in ascending ``index`` order (the index in the source voxel array, so
        ``every_kth`` yields source indices 0, k, 2k, ...). Axial slices show anterior up
        and the patient's right on the image left. Coronal and sagittal slices show
        superior up.

    Raises:
        ValueError: On mismatched shapes, NaN voxels, non-invertible affines, label values
            between ids or outside the declared ids, and SEG files whose source series is
            missing. Each message names the file and the value.
    """
    image_path = Path(image_path)
    label_path = Path(label_path)

    if config.format == "npz":
        from medground.io.npz import iter_npz_slices

        if label_path != image_path:
            raise ValueError(
                f"format 'npz' reads images and labels from one bundle, but the image path "
                f"is {image_path} and the label path {label_path}; pass the bundle as both"
            )

        yield from iter_npz_slices(image_path, config)
        return
    if config.format == "npy":
        from medground.io.npz import iter_npy_slices

        yield from iter_npy_slices(image_path, label_path, config)
        return

    volume = _load_canonical_volume(image_path, label_path, config)
    plane = config.plane
    spacing_mm = plane_spacing_mm(volume.spacing_xyz, plane)
    slice_count = plane_slice_count(volume.labels.shape, plane)

    # Strategies count in source indices, which run against the canonical ones when the
    # file stores this axis flipped.
    canonical_index: dict[int, int] = {}
    axis = 0
    for index in range(slice_count):
        axis, source_index = source_slice_index(volume.ornt, volume.labels.shape, plane, index)
        canonical_index[source_index] = index
    label_slices = (
        (source_index, plane_image(volume.labels, plane, canonical_index[source_index]))
        for source_index in sorted(canonical_index)
    )
    chosen = select_slices(label_slices, spacing_mm[0] * spacing_mm[1], config, label_path)

    for source_index, label_ids in chosen.items():
        index = canonical_index[source_index]
        yield VolumeSlice(
            image=plane_image(volume.image, plane, index),
            labels=plane_image(volume.labels, plane, index),
            plane=plane,
            index=source_index,
            index_axis=axis,
            spacing_mm=spacing_mm,
            patient_left_on=None if plane == "sagittal" else "image_right",
            axis_codes=PLANE_AXIS_CODES[plane],
            source_image=image_path,
            source_labels=label_path,
            class_names=dict(volume.class_names),
            selected_for=label_ids,
            meta=dict(volume.meta),
        )


def _load_canonical_volume(
    image_path: Path, label_path: Path, config: VolumeConfig
) -> _CanonicalVolume:
    """Read, check, convert and reorient one image and label pair.

    The label map is converted to int32 ids before the image is read, so the raw float
    labels and the image are never in memory together.
    """
    meta: dict[str, Any] = {}
    image_voxels: VoxelData | None = None
    if config.format == "dicom":
        from medground.io.dicom import read_dicom_pair

        image_voxels, label_voxels, file_names, meta = read_dicom_pair(
            image_path, label_path, config
        )
    else:
        label_voxels = read_voxel_file(label_path)
        file_names = _file_class_names(image_path, config)
    class_names = dict(config.labels) if config.labels is not None else file_names

    check_affine(label_voxels.affine, label_path)
    label_affine = label_voxels.affine
    raw_labels = squeeze_to_3d(label_voxels.array, label_path, channel=None)
    labels = labels_to_ids(raw_labels, class_names, config.label_tolerance, label_path)
    del raw_labels, label_voxels

    if image_voxels is None:
        image_voxels = read_voxel_file(image_path)
    check_affine(image_voxels.affine, image_path)
    image = squeeze_to_3d(image_voxels.array, image_path, channel=config.channel)
    if image.shape != labels.shape:
        raise ValueError(
            f"image {image_path} has shape {image.shape} but label map {label_path} has "
            f"shape {labels.shape}; they must share one voxel grid. Check that the "
            "pair belongs to the same case and that neither was resampled"
        )
    _check_same_grid(image_voxels.affine, image_path, label_affine, label_path)
    check_finite(image, image_path)

    canonical_image, ornt, spacing_xyz = reorient_to_ras(image, image_voxels.affine, image_path)
    canonical_labels, _, _ = reorient_to_ras(labels, image_voxels.affine, label_path)
    display_image = scale_to_uint8(canonical_image, config, image_path)
    del image, canonical_image, image_voxels

    logger.debug(
        "%s: canonical shape %s, spacing %s mm", image_path, canonical_labels.shape, spacing_xyz
    )
    return _CanonicalVolume(
        image=display_image,
        labels=canonical_labels,
        ornt=ornt,
        spacing_xyz=spacing_xyz,
        class_names=class_names,
        meta=meta,
    )


def _file_class_names(image_path: Path, config: VolumeConfig) -> dict[int, str]:
    """Read class names from the dataset's files when the manifest declares none."""
    if config.labels is not None:
        return dict(config.labels)
    if config.format == "nnunet":
        from medground.io.nnunet import read_nnunet_labels

        # NOTE: assumes the imagesTr/<file> layout. Datasets whose dataset.json lists
        # files elsewhere (its "dataset" entry) need volume.labels in the manifest.
        return read_nnunet_labels(image_path.parent.parent / "dataset.json")
    raise ValueError(f"format '{config.format}' needs volume.labels")


def _check_same_grid(
    image_affine: np.ndarray, image_path: Path, label_affine: np.ndarray, label_path: Path
) -> None:
    """Raise if image and labels are oriented differently; warn if their affines differ."""
    if not np.array_equal(io_orientation(image_affine), io_orientation(label_affine)):
        raise ValueError(
            f"image {image_path} and label map {label_path} have different orientations "
            f"(affines\n{image_affine}\nand\n{label_affine}); resample the label map onto "
            "the image grid with nearest-neighbour interpolation"
        )
    if not np.allclose(image_affine, label_affine, atol=_AFFINE_TOLERANCE):
        logger.warning(
            "%s and %s share a shape and orientation but their affines differ by up to "
            "%.3g; labels are matched voxel by voxel",
            image_path,
            label_path,
            float(np.max(np.abs(image_affine - label_affine))),
        )


def discover_volume_cases(root: str | Path, config: VolumeConfig) -> VolumeDiscovery:
    """Find the cases of a dataset laid out as nnU-Net/MSD, DICOM or npz bundles.

    Args:
        root: Dataset root: the folder holding ``dataset.json`` (nnU-Net, MSD), a folder
            tree of DICOM files, or a folder of ``.npz`` bundles.
        config: ``format`` selects the layout; ``channel`` picks nnU-Net image files.

    Returns:
        The cases in a stable order and the files that could not be paired.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset root {root} is not a folder; check the manifest's root path")

    if config.format == "nnunet":
        from medground.io.nnunet import discover_nnunet_cases

        return discover_nnunet_cases(root, channel=config.channel)
    if config.format == "dicom":
        from medground.io.dicom import discover_dicom_cases

        return discover_dicom_cases(root)
    if config.format == "npz":
        bundles = sorted(root.rglob("*.npz"))
        cases = tuple(
            VolumeCase(
                case_id=path.relative_to(root).with_suffix("").as_posix(),
                image_path=path,
                label_path=path,
            )
            for path in bundles
        )
        return VolumeDiscovery(cases=cases)
    raise ValueError(
        f"format '{config.format}' has no fixed layout to discover; pair its image and "
        "label files with the manifest's image and mask patterns"
    )
