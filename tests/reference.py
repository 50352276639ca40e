"""Reference geometry for the end-to-end tests, written without the engine's code.

It reads a manifest with PyYAML and the masks with Pillow, and finds components with
``scipy.ndimage``, so a test that compares its boxes with the engine's records checks the
engine against an independent implementation. Boxes are half-open ``[x0, y0, x1, y1]``:
a single pixel at column 3, row 5 is ``[3, 5, 4, 6]``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

# Keys that the manifest model fills in when a manifest leaves them out.
DEFAULT_MIN_OBJECT_PX = 10
DEFAULT_CONNECTIVITY = 2
DEFAULT_THRESHOLD = 127


@dataclass(frozen=True)
class RefObject:
    """One reference object: class, mask file, box, pixel area and centroid (x, y)."""

    class_name: str
    file: str
    bbox_xyxy: tuple[int, int, int, int]
    area: int
    centroid_xy: tuple[float, float]


def load_manifest(path: Path) -> dict[str, Any]:
    """Parse a manifest YAML file into plain Python data."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_grey(path: Path) -> np.ndarray:
    """Read a mask file as an ``(H, W)`` float array; 1-bit files become 0/255."""
    with Image.open(path) as image:
        if image.mode == "1":
            return np.asarray(image.convert("L"), dtype=np.float64)
        if image.mode in ("RGB", "RGBA"):
            return np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=2)
        return np.asarray(image, dtype=np.float64)


def read_labels(path: Path) -> np.ndarray:
    """Read a label-map file as an ``(H, W)`` integer array (palette indices kept)."""
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def _source_matches(source: dict[str, Any], relative: str) -> bool:
    pattern = re.sub(r"\{[^}]+\}", "*", source["path"])
    return fnmatch.fnmatchcase(relative, pattern)


def _structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(2, connectivity)


def _components(mask: np.ndarray, connectivity: int, min_px: int) -> list[np.ndarray]:
    labels, count = ndimage.label(mask, structure=_structure(connectivity))
    parts = [labels == k for k in range(1, count + 1)]
    return [p for p in parts if int(p.sum()) >= min_px]


def _measure(class_name: str, file: str, mask: np.ndarray) -> RefObject:
    rows, cols = np.nonzero(mask)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    centroid = (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5)
    return RefObject(class_name, file, box, int(rows.size), centroid)


def _class_masks(
    manifest: dict[str, Any], source: dict[str, Any], root: Path, image: str, relative: str
) -> list[tuple[str, np.ndarray]]:
    """Return ``(class, foreground)`` pairs of one mask file as its source declares."""
    encoding = source["encoding"]
    if encoding == "label_map":
        labels = read_labels(root / relative)
        return [(name, labels == int(value)) for value, name in source["labels"].items()]

    threshold = source.get("threshold", DEFAULT_THRESHOLD)
    foreground = read_grey(root / relative) > threshold
    if source.get("invert"):
        foreground = ~foreground
    if encoding == "binary":
        name = source["class"]
        pattern = manifest["images"].get("pattern")
        if "{" in name and pattern:
            name = name.format(**re.search(pattern, image).groupdict())
        return [(name, foreground)]
    if encoding == "per_class_files":
        label = re.search(source["class_pattern"], PurePosixPath(relative).name)["label"]
        name = source["class_map"][label]
        return [] if name is None else [(name, foreground)]
    raise ValueError(f"reference does not handle encoding {encoding!r}")


def reference_objects(manifest: dict[str, Any], record: dict[str, Any]) -> list[RefObject]:
    """Recompute every object of a record's image from its mask files and the manifest."""
    root = Path(record["source"]["root"])
    image = record["source"]["image"]
    objects_spec = manifest.get("objects", {})
    connectivity = objects_spec.get("connectivity", DEFAULT_CONNECTIVITY)
    default_min = objects_spec.get("min_object_px", DEFAULT_MIN_OBJECT_PX)
    found: list[RefObject] = []
    for relative in record["source"]["masks"]:
        source = next(s for s in manifest["masks"] if _source_matches(s, relative))
        min_px = source.get("min_object_px", default_min)
        for name, mask in _class_masks(manifest, source, root, image, relative):
            if source.get("fill_holes"):
                mask = ndimage.binary_fill_holes(mask)
            parts = _components(mask, connectivity, min_px)
            if not parts:
                continue
            if source.get("instances") == "file":
                found.append(_measure(name, relative, np.logical_or.reduce(parts)))
            else:
                found.extend(_measure(name, relative, part) for part in parts)
    return found


def filled_area_in_box(mask: np.ndarray, box: list[int]) -> int:
    """Count foreground pixels of a boolean ``(H, W)`` mask inside a half-open box."""
    x0, y0, x1, y1 = box
    return int(mask[y0:y1, x0:x1].sum())
