"""The per-image stages: load, decode masks, find objects, select targets.

:func:`process_items` is a pure function of a few :class:`ImageItem` and the run's static
settings, and returns plain rows, so it runs unchanged in a process pool or on Dask.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from medground.config.cues import CueThresholds
from medground.config.manifest import Manifest
from medground.cues import add_cues
from medground.geometry import (
    Components,
    find_components,
    keep_components,
    measure_labels,
    shape_descriptors,
)
from medground.io.masks import ClassMask, MaskError, decode_masks
from medground.io.pairing import ImageItem
from medground.io.raster import GreyImage, RasterError, read_raster
from medground.targets import RELATIONS, mark_relations, select_targets
from medground.verify.evidence import measure_evidence


@dataclass
class ImageResult:
    """Everything one image produced: object and target rows, rejections, timings."""

    index: int
    image_key: str
    image: str
    image_path: str
    masks: list[str]
    width: int = 0
    height: int = 0
    sha256: str = ""
    orientation: str = "unknown"
    slice: dict[str, Any] | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def reject(self, stage: str, rule_id: str, message: str, key: str | None = None) -> None:
        """Record a rejection of this image or of one of its parts."""
        self.rejections.append(
            {
                "key": key or self.image_key,
                "image_key": self.image_key,
                "stage": stage,
                "rule_id": rule_id,
                "message": message,
            }
        )


@dataclass
class _Object:
    row: dict[str, Any]
    components: Components
    label_id: int  # the object's value in ``components.labels``


def image_key_for(dataset: str, item: ImageItem) -> str:
    """Return the readable id prefix of an image: ``<dataset>/<case>``."""
    return f"{dataset}/{item.case_id}"


def process_image(
    item: ImageItem, manifest: Manifest, root: Path, selection: TargetSelection
) -> ImageResult:
    """Run load and objects for one image and hand it to ``selection`` for its targets."""
    key = image_key_for(manifest.name, item)
    result = ImageResult(item.index, key, item.image, str(root / item.image), item.all_masks)
    clock = time.perf_counter()

    try:
        raster = read_raster(root / item.image)
    except RasterError as exc:
        result.reject("load", "load.unreadable_image", str(exc))
        return result
    result.height, result.width = raster.height, raster.width
    result.sha256 = raster.sha256 or ""
    try:
        class_masks, skipped = decode_masks(
            manifest, root, item.masks, item.placeholders, (raster.height, raster.width)
        )
    except MaskError as exc:
        result.reject("load", f"load.{exc.rule_id}", str(exc))
        return result
    for skip in skipped:
        result.reject("load", f"load.{skip.rule_id}", skip.message, key=f"{key}/{skip.file}")
    result.orientation = manifest.orientation
    result.timings["load"] = time.perf_counter() - clock
    _objects_then_targets(result, manifest, class_masks, raster.array, selection)
    return result


def _objects_then_targets(
    result: ImageResult,
    manifest: Manifest,
    class_masks: list[ClassMask],
    pixels: np.ndarray,
    selection: TargetSelection,
) -> None:
    clock = time.perf_counter()
    objects = _find_objects(result, manifest, class_masks)
    result.timings["objects"] = time.perf_counter() - clock
    selection.add(result, objects, pixels)


@dataclass
class _Waiting:
    result: ImageResult
    objects: list[_Object]
    pixels: np.ndarray


class TargetSelection:
    """Select the targets of images and describe the objects those targets name.

    An image with more objects than ``targets.max_single_per_image`` needs to know which
    objects a size, position or side cue singles out before sampling its singles. That
    takes the cue stage (:func:`medground.cues.add_cues`), whose fixed cost per call is
    far above its cost per row, so such images wait here and share one call: at
    :meth:`flush`, or as soon as the waiting images hold ``max_waiting_px`` pixels.
    Every other image is finished at once. The order in which images are finished does
    not change their targets: each image samples with its own seeded generator.
    """

    def __init__(self, manifest: Manifest, cues: CueThresholds, max_waiting_px: int = 32_000_000):
        self.manifest = manifest
        self.cues = cues
        self.max_waiting_px = max_waiting_px
        self._waiting: list[_Waiting] = []
        self._waiting_px = 0

    def add(self, result: ImageResult, objects: list[_Object], pixels: np.ndarray) -> None:
        """Select targets for one image now, or keep it for the next shared cue pass."""
        if not objects:
            return
        clock = time.perf_counter()
        rows = [o.row for o in objects]
        mark_relations(rows, self.cues.relations)
        result.objects = rows
        if len(rows) > self.manifest.targets.max_single_per_image:
            self._waiting.append(_Waiting(result, objects, pixels))
            self._waiting_px += pixels.shape[0] * pixels.shape[1]
            _add_time(result, "targets", time.perf_counter() - clock)
            if self._waiting_px >= self.max_waiting_px:
                self.flush()
            return
        self._finish(result, objects, pixels)
        _add_time(result, "targets", time.perf_counter() - clock)

    def flush(self) -> None:
        """Finish every waiting image with one cue pass over all their objects."""
        if not self._waiting:
            return
        clock = time.perf_counter()
        waiting, self._waiting, self._waiting_px = self._waiting, [], 0
        _mark_singleable(
            [row for w in waiting for row in w.result.objects],
            [w.result.orientation for w in waiting for _ in w.result.objects],
            self.cues,
        )
        for entry in waiting:
            self._finish(entry.result, entry.objects, entry.pixels)
        share = (time.perf_counter() - clock) / len(waiting)
        for entry in waiting:
            _add_time(entry.result, "targets", share)

    def _finish(self, result: ImageResult, objects: list[_Object], pixels: np.ndarray) -> None:
        rng = random.Random(f"{self.manifest.seed}:{result.image_key}")
        result.targets = select_targets(result.objects, self.manifest, rng)
        described = {
            oid for t in result.targets if t["task"] != "multi" for oid in t["object_ids"]
        }
        grey = GreyImage(pixels) if described else None
        value_range = grey.value_range() if grey is not None else (0.0, 0.0)
        for obj in objects:
            if obj.row["object_id"] in described:
                _describe(obj, grey, value_range)


def _add_time(result: ImageResult, stage: str, seconds: float) -> None:
    result.timings[stage] = result.timings.get(stage, 0.0) + seconds


def process_volume(
    item: ImageItem, manifest: Manifest, root: Path, selection: TargetSelection, slice_dir: Path
) -> list[ImageResult]:
    """Cut one volume into the slices its strategy selects and process each as an image.

    Each slice is rendered to ``<slice_dir>/<case>/<plane>-<index>.png``; that PNG is what
    records, previews and VLMs see. Only one volume is in memory at a time.
    """
    from medground.io.volume import iter_volume_slices, save_slice_png

    if manifest.volume is None:
        raise ValueError("process_volume needs a manifest with a volume section")
    config = volume_config(manifest)
    key = image_key_for(manifest.name, item)
    label_file = item.all_masks[0]
    results: list[ImageResult] = []
    clock = time.perf_counter()
    try:
        slices = list(iter_volume_slices(root / item.image, root / label_file, config))
    except (ValueError, OSError) as exc:
        failed = ImageResult(item.index, key, item.image, str(root / item.image), item.all_masks)
        failed.reject("load", "load.unreadable_volume", str(exc))
        return [failed]
    load_seconds = time.perf_counter() - clock

    for volume_slice in slices:
        name = f"{volume_slice.plane or 'slice'}-{volume_slice.index:04d}"
        png = save_slice_png(volume_slice.image, slice_dir / item.case_id / f"{name}.png")
        result = ImageResult(item.index, f"{key}/{name}", item.image, str(png), item.all_masks)
        result.height, result.width = volume_slice.labels.shape
        result.sha256 = hashlib.sha256(png.read_bytes()).hexdigest()
        result.orientation = (
            "radiological" if volume_slice.patient_left_on == "image_right" else "unknown"
        )
        result.slice = {"plane": volume_slice.plane or "axial", "index": volume_slice.index}
        min_px = manifest.objects.min_object_px
        if volume_slice.spacing_mm is not None:
            result.slice["spacing_mm"] = [float(v) for v in volume_slice.spacing_mm]
            pixel_mm2 = volume_slice.spacing_mm[0] * volume_slice.spacing_mm[1]
            min_px = max(1, math.ceil(config.min_object_mm2 / pixel_mm2))
        result.timings["load"] = load_seconds / len(slices)
        class_masks = [
            ClassMask(class_name=name_, source_index=0, files=(label_file,),
                      mask=volume_slice.labels == label_id, instances="components",
                      fill_holes=False, min_object_px=min_px)
            for label_id, name_ in sorted(volume_slice.class_names.items())
            if (volume_slice.labels == label_id).any()
        ]
        _objects_then_targets(result, manifest, class_masks, volume_slice.image, selection)
        results.append(result)
    if not results:
        empty = ImageResult(item.index, key, item.image, str(root / item.image), item.all_masks)
        empty.reject("objects", "objects.empty_mask",
                     f"{label_file}: no slice holds a declared label; the volume has no target")
        results.append(empty)
    return results


def volume_config(manifest: Manifest) -> Any:
    """Return the manifest's volume settings with label names from its label-map source."""
    config = manifest.volume
    if config is not None and config.labels is None and config.format not in ("nnunet",
                                                                               "dicom"):
        source = manifest.masks[0]
        labels = getattr(source, "labels", None)
        if labels:
            config = config.model_copy(update={"labels": dict(labels)})
    return config


def _find_objects(
    result: ImageResult, manifest: Manifest, class_masks: list[ClassMask]
) -> list[_Object]:
    if not any(cm.mask.any() for cm in class_masks):
        files = ", ".join(result.masks) or "(none)"
        result.reject(
            "objects",
            "objects.empty_mask",
            f"mask file(s) {files} contain no foreground: the image has no target",
        )
        return []

    height, width = result.height, result.width
    default_min = manifest.objects.min_object_px
    found: list[_Object] = []
    for class_mask in class_masks:
        min_px = class_mask.min_object_px if class_mask.min_object_px is not None else default_min
        components = find_components(class_mask.mask, manifest.objects.connectivity)
        small = components.area < min_px
        for index in np.flatnonzero(small):
            box = components.bbox_xyxy[index].tolist()
            result.reject(
                "objects",
                "objects.min_object_size",
                f"component of {int(components.area[index])} px at {box} in "
                f"{', '.join(class_mask.files)} ({class_mask.class_name}) is below "
                f"min_object_px={min_px}; removed",
                key=f"{result.image_key}/removed/{class_mask.class_name}/{box[0]}-{box[1]}",
            )
        kept = keep_components(components, ~small)
        if len(kept) == 0:
            continue
        if class_mask.instances == "file":
            merged = kept.foreground().astype(np.int32)
            file_object = measure_labels(merged, 1, origin_xy=kept.origin_xy)
            found.extend(_object_rows(result, class_mask, file_object))
        else:
            found.extend(_object_rows(result, class_mask, kept))

    if not found:
        result.reject(
            "objects",
            "objects.no_object_above_min_size",
            f"every component in {', '.join(result.masks)} is below the minimum object size; "
            "the image has no target",
        )
        return []

    _number_and_rank(found, width, height)
    return found


def _object_rows(result: ImageResult, class_mask: ClassMask, comps: Components) -> list[_Object]:
    """Return one object row per component (Python values, read from the arrays at once)."""
    width, height = result.width, result.height
    pixels = width * height
    files = list(class_mask.files)
    objects = []
    for (x0, y0, x1, y1), area, (cx, cy), label_id in zip(
        comps.bbox_xyxy.tolist(),
        comps.area.tolist(),
        comps.centroid_xy.tolist(),
        comps.label_ids.tolist(),
        strict=True,
    ):
        row: dict[str, Any] = {
            "image_key": result.image_key,
            "class": class_mask.class_name,
            "source_files": files,
            "x0": x0,
            "y0": y0,
            "x1": x1,
            "y1": y1,
            "box_w": x1 - x0,
            "box_h": y1 - y0,
            "aspect": (x1 - x0) / (y1 - y0),
            "area": area,
            "area_frac": area / pixels,
            "cx": cx,
            "cy": cy,
            "cx_frac": cx / width,
            "cy_frac": cy / height,
            "touches_border": x0 == 0 or y0 == 0 or x1 == width or y1 == height,
            "eccentricity": None,
            "orientation_deg": None,
            "solidity": None,
            "circularity": None,
            "evidence_cnr": None,
            "evidence_edge": None,
        }
        objects.append(_Object(row, comps, label_id))
    return objects


def _number_and_rank(found: list[_Object], width: int, height: int) -> None:
    """Give readable ids (``<class>-<k>`` in reading order) and ranks within each class."""
    by_class: dict[str, list[_Object]] = {}
    for obj in found:
        by_class.setdefault(obj.row["class"], []).append(obj)
    for name, group in by_class.items():
        group.sort(key=lambda o: (o.row["y0"], o.row["x0"], -o.row["area"]))
        for k, obj in enumerate(group, start=1):
            obj.row["object_id"] = f"{name}-{k}"
            obj.row["class_count"] = len(group)
        for column, rank_key, descending in (
            ("size_rank", "area", True),
            ("x_rank", "cx", False),
            ("y_rank", "cy", False),
        ):
            ordered = sorted(group, key=lambda o: o.row[rank_key], reverse=descending)
            for rank, obj in enumerate(ordered, start=1):
                obj.row[column] = rank
        for relation in RELATIONS:
            for obj in group:
                obj.row[f"is_{relation}"] = False
    found.sort(key=lambda o: (o.row["class"], o.row["y0"], o.row["x0"]))


def _mark_singleable(
    rows: list[dict[str, Any]], orientations: list[str], cues: CueThresholds
) -> None:
    """Set ``singleable`` on objects that a size, position or side cue singles out.

    Uses the same cue stage as the batch (:func:`medground.cues.add_cues`), before shape
    descriptors exist, so shape cannot help here. ``orientations`` gives each row's
    image convention; rows of several images may come together.
    """
    frame = pl.DataFrame(
        {
            "image_key": [row["image_key"] for row in rows],
            "class": [row["class"] for row in rows],
            "area_frac": [row["area_frac"] for row in rows],
            "cx_frac": [row["cx_frac"] for row in rows],
            "cy_frac": [row["cy_frac"] for row in rows],
            "orientation": orientations,
        },
        schema={
            "image_key": pl.String,
            "class": pl.String,
            "area_frac": pl.Float64,
            "cx_frac": pl.Float64,
            "cy_frac": pl.Float64,
            "orientation": pl.String,
        },
    ).with_columns(
        eccentricity=pl.lit(None, pl.Float64),
        solidity=pl.lit(None, pl.Float64),
    )
    flags = add_cues(frame, cues).select(
        pl.col("size_unique") | pl.col("position_unique") | pl.col("image_side_unique")
    ).to_series().to_list()
    for row, flag in zip(rows, flags, strict=True):
        row["singleable"] = bool(flag) or row["class_count"] == 1


def _describe(obj: _Object, grey: GreyImage | None, value_range: tuple[float, float]) -> None:
    """Add shape descriptors and image evidence to an object that a query will describe."""
    row = obj.row
    labels = obj.components.labels_in((row["x0"], row["y0"], row["x1"], row["y1"]))
    crop = labels == obj.label_id
    shape = shape_descriptors(crop)
    row["eccentricity"] = shape.eccentricity
    row["orientation_deg"] = shape.orientation_deg
    row["solidity"] = shape.solidity
    row["circularity"] = shape.circularity
    if grey is not None:
        box = (row["x0"], row["y0"], row["x1"], row["y1"])
        row["evidence_cnr"], row["evidence_edge"] = measure_evidence(grey, crop, box, value_range)


def process_items(
    items: Sequence[ImageItem],
    manifest: Manifest,
    root: Path,
    cues: CueThresholds,
    slice_dir: Path,
) -> list[list[ImageResult]]:
    """Process paired items: a 2D image gives one result, a volume one per slice.

    Items processed together share the cue pass of their crowded images
    (:class:`TargetSelection`), so a few dozen per call cost less than one at a time.
    """
    selection = TargetSelection(manifest, cues)
    per_item: list[list[ImageResult]] = []
    for item in items:
        if manifest.volume is not None:
            per_item.append(process_volume(item, manifest, root, selection, slice_dir))
        else:
            per_item.append([process_image(item, manifest, root, selection)])
    selection.flush()
    return per_item
