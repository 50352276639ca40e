"""Read stacks of 2D images from MedSegBench-style ``.npz`` bundles and plain ``.npy`` files.

A MedSegBench bundle holds, per split, ``<split>_images`` of shape (N, H, W) or
(N, H, W, C) and ``<split>_label`` of shape (N, H, W) (with ``_<category>`` appended for
datasets with sub-categories). Bundle members are streamed one image at a time from the
zip archive, so memory stays near one image even for compressed bundles of thousands of
images. Stacks carry no patient orientation or spacing.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from medground.config.volume import VolumeConfig
from medground.io.slicing import VolumeSlice, labels_to_ids, scale_to_uint8, select_slices

logger = logging.getLogger(__name__)

# A factory returns a fresh iterator over the stack's items, so that the stack can be
# read twice (once to choose slices, once to yield them) without holding it in memory.
_ItemFactory = Callable[[], Iterator[np.ndarray]]


def iter_npz_slices(bundle_path: Path, config: VolumeConfig) -> Iterator[VolumeSlice]:
    """Yield the chosen images of one split of a MedSegBench-style bundle.

    Args:
        bundle_path: ``.npz`` file.
        config: ``npz`` names the split or keys; ``strategy`` picks images by their labels.

    Yields:
        Slices with ``plane`` None and ``index`` the position in the split's arrays.
    """
    images_key, labels_key = config.npz.resolved_keys()
    try:
        archive = zipfile.ZipFile(bundle_path)
    except (FileNotFoundError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{bundle_path}: not a readable .npz bundle ({exc})") from exc

    with archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        for key in (images_key, labels_key):
            if key not in members:
                raise ValueError(
                    f"{bundle_path}: no array '{key}' in the bundle; arrays present: "
                    f"{sorted(members)}. Set volume.npz.split/category or "
                    "volume.npz.images_key/labels_key"
                )
        image_shape = _member_shape(archive, members[images_key], bundle_path)
        label_shape = _member_shape(archive, members[labels_key], bundle_path)
        yield from _iter_stack_slices(
            image_items=lambda: _iter_member_items(archive, members[images_key], bundle_path),
            label_items=lambda: _iter_member_items(archive, members[labels_key], bundle_path),
            image_shape=image_shape,
            label_shape=label_shape,
            image_path=bundle_path,
            label_path=bundle_path,
            config=config,
        )


def iter_npy_slices(
    image_path: Path, label_path: Path, config: VolumeConfig
) -> Iterator[VolumeSlice]:
    """Yield the chosen images of a stack stored as two ``.npy`` files.

    Args:
        image_path: (N, H, W), (N, H, W, C) or single (H, W) image array.
        label_path: (N, H, W) or single (H, W) label array.
        config: ``strategy`` picks images by their labels.

    Yields:
        Slices with ``plane`` None and ``index`` the position in the stack.
    """
    images = _load_npy(image_path)
    labels = _load_npy(label_path)
    if labels.ndim == 2:
        images, labels = images[np.newaxis], labels[np.newaxis]
    yield from _iter_stack_slices(
        image_items=lambda: iter(images),
        label_items=lambda: iter(labels),
        image_shape=images.shape,
        label_shape=labels.shape,
        image_path=image_path,
        label_path=label_path,
        config=config,
    )


def _load_npy(path: Path) -> np.ndarray:
    try:
        # A memory map reads only the items the iterators touch.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc


def _iter_stack_slices(
    *,
    image_items: _ItemFactory,
    label_items: _ItemFactory,
    image_shape: tuple[int, ...],
    label_shape: tuple[int, ...],
    image_path: Path,
    label_path: Path,
    config: VolumeConfig,
) -> Iterator[VolumeSlice]:
    """Check a stack's shapes, choose images from the labels, then yield them."""
    _check_stack_shapes(image_shape, label_shape, image_path, label_path)
    class_names = dict(config.labels or {})

    def label_ids() -> Iterator[tuple[int, np.ndarray]]:
        for index, item in enumerate(label_items()):
            yield index, _to_ids(item)

    def _to_ids(item: np.ndarray) -> np.ndarray:
        return labels_to_ids(_label_plane(item), class_names, config.label_tolerance, label_path)

    chosen = select_slices(label_ids(), 1.0, config, label_path)

    for index, (label_item, image_item) in enumerate(
        zip(label_items(), image_items(), strict=True)
    ):
        if index not in chosen:
            continue
        display = scale_to_uint8(
            _image_plane(image_item, config.channel, image_path, index),
            config,
            image_path,
            where=f" image {index}",
        )
        yield VolumeSlice(
            image=np.ascontiguousarray(display),
            labels=_to_ids(label_item),
            plane=None,
            index=index,
            index_axis=0,
            spacing_mm=None,
            patient_left_on=None,
            axis_codes=None,
            source_image=image_path,
            source_labels=label_path,
            class_names=class_names,
            selected_for=chosen[index],
        )


def _check_stack_shapes(
    image_shape: tuple[int, ...],
    label_shape: tuple[int, ...],
    image_path: Path,
    label_path: Path,
) -> None:
    label_ok = len(label_shape) == 3 or (len(label_shape) == 4 and label_shape[3] == 1)
    image_ok = len(image_shape) in (3, 4)
    if not (label_ok and image_ok):
        raise ValueError(
            f"stack shapes {image_shape} ({image_path}) and {label_shape} ({label_path}) "
            "are not (N, H, W[, C]) images with (N, H, W) labels"
        )
    if image_shape[:3] != label_shape[:3]:
        raise ValueError(
            f"image stack {image_path} has shape {image_shape} but label stack "
            f"{label_path} has shape {label_shape}; the count N and (H, W) must match"
        )


def _label_plane(item: np.ndarray) -> np.ndarray:
    return item[..., 0] if item.ndim == 3 else item


def _image_plane(item: np.ndarray, channel: int, path: Path, index: int) -> np.ndarray:
    """Return (H, W) or (H, W, 3): RGB stays colour, other channel counts pick ``channel``."""
    if item.ndim == 2 or item.shape[2] == 3:
        return np.asarray(item)
    if item.shape[2] == 1:
        return np.asarray(item[..., 0])
    if channel >= item.shape[2]:
        raise ValueError(
            f"{path} image {index}: volume.channel is {channel} but images have "
            f"{item.shape[2]} channels; choose 0...{item.shape[2] - 1}"
        )
    return np.asarray(item[..., channel])


def _read_npy_header(
    stream: IO[bytes], member: str, path: Path
) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"{path}: member {member} uses .npy format {version}; expected 1.0/2.0")
    if dtype.hasobject:
        raise ValueError(
            f"{path}: member {member} contains Python objects, which are rejected because "
            "loading them runs pickle; store numeric arrays"
        )
    return tuple(shape), fortran_order, dtype


def _member_shape(archive: zipfile.ZipFile, member: str, path: Path) -> tuple[int, ...]:
    with archive.open(member) as stream:
        shape, _fortran_order, _dtype = _read_npy_header(stream, member, path)
    return shape


def _iter_member_items(archive: zipfile.ZipFile, member: str, path: Path) -> Iterator[np.ndarray]:
    """Stream the items ``array[0], array[1], ...`` of one bundle member."""
    with archive.open(member) as stream:
        shape, fortran_order, dtype = _read_npy_header(stream, member, path)
        if fortran_order and len(shape) > 1:
            # Items of a Fortran-ordered array are not contiguous in the file.
            logger.warning(
                "%s: member %s is Fortran-ordered, so it is loaded whole instead of streamed",
                path,
                member,
            )
            buffer = stream.read()
            if len(buffer) != dtype.itemsize * math.prod(shape):
                raise ValueError(f"{path}: member {member} is truncated; the bundle is damaged")
            yield from np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F")
            return

        item_shape = shape[1:]
        item_bytes = dtype.itemsize * math.prod(item_shape)
        for index in range(shape[0]):
            buffer = stream.read(item_bytes)
            if len(buffer) != item_bytes:
                raise ValueError(
                    f"{path}: member {member} ends inside item {index} of {shape[0]}; "
                    "the bundle is truncated"
                )
            yield np.frombuffer(buffer, dtype=dtype).reshape(item_shape)
