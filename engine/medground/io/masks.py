"""Decode mask files into boolean per-class masks, as each manifest encoding declares."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from medground.config.errors import choices_text
from medground.config.manifest import (
    BinaryMasks,
    LabelMapMasks,
    Manifest,
    PaletteMasks,
    PerClassFileMasks,
)
from medground.geometry import fill_holes
from medground.io.raster import (
    Raster,
    RasterError,
    channel_spread,
    channel_sum,
    colour_planes,
    read_raster,
)

# A "grey" RGB mask may differ between channels by JPEG noise; more than this is colour.
GREY_CHANNEL_TOLERANCE = 48


class MaskError(Exception):
    """A mask that cannot be used for its image, with a rule id for the rejection record."""

    def __init__(self, rule_id: str, message: str):
        super().__init__(message)
        self.rule_id = rule_id


@dataclass(frozen=True)
class ClassMask:
    """Foreground of one class from one source: ``mask`` is ``(H, W)`` bool."""

    class_name: str
    source_index: int
    files: tuple[str, ...]
    mask: np.ndarray
    instances: str
    fill_holes: bool
    min_object_px: int | None


@dataclass(frozen=True)
class SkippedMask:
    """A mask file deliberately not used, with the reason."""

    file: str
    rule_id: str
    message: str


RasterReader = Callable[..., Raster]


def decode_masks(
    manifest: Manifest,
    root: Path,
    mask_files: tuple[tuple[str, ...], ...],
    placeholders: dict[str, str],
    image_hw: tuple[int, int],
    reader: RasterReader = read_raster,
) -> tuple[list[ClassMask], list[SkippedMask]]:
    """Decode every mask file of one image.

    Raises:
        MaskError: for an unreadable mask, a size mismatch, an undeclared label or class.
    """
    class_masks: list[ClassMask] = []
    skipped: list[SkippedMask] = []
    class_names = {c.name for c in manifest.classes}
    for index, (source, files) in enumerate(zip(manifest.masks, mask_files, strict=True)):
        for relative in files:
            raster = _read(root, relative, image_hw, reader, isinstance(source, LabelMapMasks))
            common = dict(
                source_index=index,
                files=(relative,),
                instances=source.instances,
                fill_holes=source.fill_holes,
                min_object_px=source.min_object_px,
            )
            if isinstance(source, BinaryMasks):
                name = (
                    source.class_.format(**placeholders) if "{" in source.class_ else source.class_
                )
                _check_class(name, class_names, relative, f"masks.{index}.class")
                mask = _binary(raster, source.threshold, relative)
                if source.invert:
                    mask = ~mask
                class_masks.append(ClassMask(class_name=name, mask=mask, **common))
            elif isinstance(source, PerClassFileMasks):
                file_name = PurePosixPath(relative).name
                match = re.search(source.class_pattern, file_name)
                if match is None:
                    raise MaskError(
                        "unknown_label",
                        f"{relative}: file name does not match masks.{index}.class_pattern "
                        f"{source.class_pattern!r}; fix the pattern or the mask path glob",
                    )
                label = match.group("label")
                if label not in source.class_map:
                    raise MaskError(
                        "unknown_label",
                        f"{relative}: label {label!r} is not in masks.{index}.class_map "
                        f"(declared: {choices_text(repr(k) for k in source.class_map)}); add it, "
                        "mapped to a class or to null to skip such files",
                    )
                name = source.class_map[label]
                if name is None:
                    skipped.append(
                        SkippedMask(
                            relative,
                            "skipped_label",
                            f"{relative}: label "
                            f"{label!r} is mapped to null in class_map; "
                            "file not used",
                        )
                    )
                    continue
                mask = _binary(raster, source.threshold, relative)
                class_masks.append(ClassMask(class_name=name, mask=mask, **common))
            elif isinstance(source, LabelMapMasks):
                class_masks.extend(_label_map(raster, source, relative, index, common))
            elif isinstance(source, PaletteMasks):
                class_masks.extend(_palette(raster, source, relative, index, common))

    class_masks = [
        replace(item, mask=fill_holes(item.mask)) if item.fill_holes else item
        for item in class_masks
    ]
    return class_masks, skipped


def _read(
    root: Path, relative: str, image_hw: tuple[int, int], reader: RasterReader, indices: bool
) -> Raster:
    try:
        raster = reader(root / relative, indices, hash_content=False)
    except RasterError as exc:
        raise MaskError("unreadable_mask", str(exc)) from exc
    if (raster.height, raster.width) != image_hw:
        raise MaskError(
            "mask_size_mismatch",
            f"{relative}: mask is {raster.width}x{raster.height} px but its image is "
            f"{image_hw[1]}x{image_hw[0]} px; masks are never resized, so fix the pairing or "
            "the file",
        )
    return raster


def _check_class(name: str, valid: set[str], relative: str, key: str) -> None:
    if name not in valid:
        raise MaskError(
            "unknown_label",
            f"{relative}: class {name!r} (from {key}) is not declared in classes "
            f"({choices_text(valid)}); add it to classes",
        )


def _binary(raster: Raster, threshold: int, relative: str) -> np.ndarray:
    array = raster.array
    if array.dtype == bool:
        return array if array.ndim == 2 else array.any(axis=2)
    if array.ndim == 2:
        return array > threshold
    # Two passes over the channels (spread, then sum) read planes faster than pixels.
    planes = colour_planes(array)
    spread = channel_spread(planes, axis=0)
    if spread > GREY_CHANNEL_TOLERANCE:
        raise MaskError(
            "colour_binary_mask",
            f"{relative}: a binary mask with colour (channels differ by up to {spread}); "
            "declare encoding 'palette' for colour-coded classes",
        )
    return channel_sum(planes, axis=0) > 3 * threshold


def _label_map(
    raster: Raster, source: LabelMapMasks, relative: str, index: int, common: dict
) -> list[ClassMask]:
    array = raster.array
    if array.ndim == 3:
        if channel_spread(array) > 0:
            raise MaskError(
                "colour_label_map",
                f"{relative}: label map has colour channels; declare encoding 'palette'",
            )
        array = array[:, :, 0]
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise MaskError(
            "unknown_label",
            f"{relative}: label map of type {array.dtype} is not "
            "integer; convert it or use a volume reader with label_tolerance",
        )
    if array.dtype in (np.uint8, np.uint16, np.bool_):
        # Counting is cheaper than sorting for small unsigned label types.
        values = np.flatnonzero(np.bincount(array.ravel(), minlength=1))
    else:
        values = np.unique(array)
    allowed = set(source.labels) | {source.background} | set(source.ignore)
    unknown = [int(v) for v in values if int(v) not in allowed]
    if unknown:
        raise MaskError(
            "unknown_label",
            f"{relative}: label value(s) {', '.join(map(str, unknown[:10]))} not declared in "
            f"masks.{index}.labels (declared: {choices_text(map(str, source.labels))}); add them "
            "to labels, or to ignore",
        )
    return [
        ClassMask(class_name=name, mask=array == value, **common)
        for value, name in source.labels.items()
        if value in values
    ]


def _palette(
    raster: Raster, source: PaletteMasks, relative: str, index: int, common: dict
) -> list[ClassMask]:
    array = raster.array
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    array = array.astype(np.int16)
    colors = {_rgb(c): name for c, name in source.colors.items()}
    claimed = np.zeros(array.shape[:2], bool)
    result = []
    for rgb in [_rgb(source.background), *colors]:
        close = np.abs(array - np.array(rgb, np.int16)).max(axis=2) <= source.tolerance
        claimed |= close
        if rgb in colors and close.any():
            result.append(ClassMask(class_name=colors[rgb], mask=close, **common))
    if not claimed.all():
        rows, cols = np.nonzero(~claimed)
        sample = tuple(int(v) for v in array[rows[0], cols[0]][:3])
        raise MaskError(
            "unknown_label",
            f"{relative}: {rows.size} px have colours not in masks.{index}.colors, e.g. "
            f"rgb{sample} at x={cols[0]}, y={rows[0]}; add the colour or raise tolerance",
        )
    return result


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
