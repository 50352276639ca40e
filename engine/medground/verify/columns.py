"""The sample table's columns: the names, types and meaning every rule can use.

This table is the single source for rule validation (unknown columns are reported at
load), for neutral defaults in rule examples, and for ``mgr rules columns``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl


@dataclass(frozen=True)
class Column:
    """One column of the sample table."""

    dtype: type[pl.DataType] | pl.DataType
    description: str
    default: Any


SAMPLE_COLUMNS: dict[str, Column] = {
    "sample_id": Column(pl.String, "record id", "ds/case/t0/q0"),
    "image_key": Column(pl.String, "<dataset>/<case>[/<slice>]", "ds/case"),
    "dataset": Column(pl.String, "manifest name", "ds"),
    "modality": Column(pl.String, "modality from the manifest", "other"),
    "anatomy": Column(pl.String, "anatomy from the manifest (may be null)", None),
    "orientation": Column(
        pl.String, "left/right convention: radiological, neurological or unknown", "unknown"
    ),
    "task": Column(pl.String, "single, multi or relation", "single"),
    "class": Column(pl.String, "target class", "lesion"),
    "query": Column(pl.String, "the referring expression", "Find the lesion."),
    "relation": Column(pl.String, "relation of a relational target (largest, ...)", None),
    "image_w": Column(pl.Int64, "image width in pixels", 512),
    "image_h": Column(pl.Int64, "image height in pixels", 512),
    "n_targets": Column(pl.Int64, "number of target boxes", 1),
    "expected_count": Column(
        pl.Int64, "boxes the task implies: 1, or all objects of the class for multi", 1
    ),
    "class_count": Column(pl.Int64, "objects of the target class in the image", 1),
    "min_x0": Column(pl.Int64, "smallest left edge over the target boxes (px)", 100),
    "min_y0": Column(pl.Int64, "smallest top edge over the target boxes (px)", 100),
    "max_x1": Column(pl.Int64, "largest right edge over the target boxes (px)", 200),
    "max_y1": Column(pl.Int64, "largest bottom edge over the target boxes (px)", 200),
    "min_box_w": Column(pl.Int64, "narrowest target box width (px)", 100),
    "min_box_h": Column(pl.Int64, "lowest target box height (px)", 100),
    "min_box_area": Column(pl.Int64, "smallest target box area (px^2)", 10000),
    "max_box_area_frac": Column(pl.Float64, "largest target box area / image area", 0.04),
    "area": Column(pl.Int64, "mask area of the (first) target object (px)", 7000),
    "area_frac": Column(pl.Float64, "mask area / image area of the (first) target object", 0.03),
    "cx_frac": Column(pl.Float64, "centroid x / image width of the target object", 0.3),
    "cy_frac": Column(pl.Float64, "centroid y / image height of the target object", 0.3),
    "eccentricity": Column(pl.Float64, "eccentricity of the target object (0 = circle)", 0.5),
    "solidity": Column(pl.Float64, "area / convex hull area of the target object", 0.95),
    "circularity": Column(pl.Float64, "4*pi*area/perimeter^2 of the target object", 0.85),
    "touches_border": Column(pl.Boolean, "any target object touches the image border", False),
    "size": Column(pl.String, "size cue of the target object", "small"),
    "position": Column(pl.String, "3x3 grid cue, e.g. 'upper left'", "upper left"),
    "vertical": Column(pl.String, "upper, middle or lower", "upper"),
    "horizontal": Column(pl.String, "left, centre or right", "left"),
    "image_side": Column(pl.String, "left or right half of the image", "left"),
    "patient_side": Column(pl.String, "patient's side when the orientation is known", None),
    "shape": Column(pl.String, "round, oval, elongated or irregular", "round"),
    "size_unique": Column(pl.Boolean, "no other object of the class shares the size cue", True),
    "position_unique": Column(pl.Boolean, "no other object of the class shares the position", True),
    "image_side_unique": Column(pl.Boolean, "no other object of the class is on that side", True),
    "shape_unique": Column(pl.Boolean, "no other object of the class shares the shape", True),
    "object_id": Column(pl.String, "id of the (first) target object, e.g. 'polyp-1'", "lesion-1"),
    "is_largest": Column(
        pl.Boolean, "the target object is clearly the largest of its class (null for multi)", False
    ),
    "is_smallest": Column(
        pl.Boolean, "the target object is clearly the smallest of its class", False
    ),
    "is_leftmost": Column(
        pl.Boolean, "the target object is clearly the leftmost of its class", False
    ),
    "is_rightmost": Column(
        pl.Boolean, "the target object is clearly the rightmost of its class", False
    ),
    "is_uppermost": Column(
        pl.Boolean, "the target object is clearly the uppermost of its class", False
    ),
    "is_lowermost": Column(
        pl.Boolean, "the target object is clearly the lowermost of its class", False
    ),
    "class_min_area_frac": Column(
        pl.Float64, "lower area_fraction_bounds of the target class in the manifest (or null)", None
    ),
    "class_max_area_frac": Column(
        pl.Float64, "upper area_fraction_bounds of the target class in the manifest (or null)", None
    ),
    "claims_unique": Column(
        pl.Boolean,
        "no other object of the target's class fits every claim of the query (null for multi)",
        True,
    ),
}


def register_columns(columns: dict[str, Column]) -> None:
    """Add columns computed by another stage (query claims, image evidence)."""
    clash = set(columns) & set(SAMPLE_COLUMNS)
    if clash:
        raise ValueError(f"sample columns registered twice: {', '.join(sorted(clash))}")
    SAMPLE_COLUMNS.update(columns)


def table_schema() -> dict[str, pl.DataType]:
    """Return the polars schema of the sample table."""
    return {
        name: col.dtype() if isinstance(col.dtype, type) else col.dtype
        for name, col in SAMPLE_COLUMNS.items()
    }
