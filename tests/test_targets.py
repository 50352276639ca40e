"""Relations and target selection on hand-made object rows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from medground.config.cues import RelationThresholds
from medground.config.manifest import Manifest
from medground.targets import mark_relations, select_targets

THRESHOLDS = RelationThresholds(size_ratio=1.3, position_margin=0.08)


def obj(oid: str, area: int, cx: float, cy: float, border: bool = False,
        half: int = 5) -> dict[str, Any]:
    """An object on a 100 x 100 image centred at (cx, cy) (fractions), with a box of 2*half."""
    x, y = cx * 100, cy * 100
    return {"image_key": "ds/case", "object_id": oid, "class": "lesion", "area": area,
            "cx_frac": cx, "cy_frac": cy, "cx": x, "cy": y, "touches_border": border,
            "class_count": 2, "x0": x - half, "y0": y - half, "x1": x + half, "y1": y + half}


@pytest.mark.parametrize(
    ("areas", "largest", "smallest"),
    [
        pytest.param((1000, 500), True, True, id="clear-ratio"),
        pytest.param((1000, 900), False, False, id="too-close-to-call"),
    ],
)
def test_size_relations_need_a_clear_ratio(areas: tuple[int, int], largest: bool,
                                           smallest: bool) -> None:
    rows = [obj("lesion-1", areas[0], 0.2, 0.5), obj("lesion-2", areas[1], 0.8, 0.5)]
    mark_relations(rows, THRESHOLDS)
    assert rows[0]["is_largest"] is largest
    assert rows[1]["is_smallest"] is smallest


def test_border_fragment_is_never_the_smallest() -> None:
    rows = [obj("lesion-1", 1000, 0.5, 0.5), obj("lesion-2", 30, 0.0, 0.5, border=True)]
    mark_relations(rows, THRESHOLDS)
    assert rows[1]["is_smallest"] is False
    assert rows[0]["is_largest"] is True


def test_positions_need_a_margin() -> None:
    rows = [obj("lesion-1", 500, 0.45, 0.2), obj("lesion-2", 510, 0.50, 0.8)]
    mark_relations(rows, THRESHOLDS)
    assert rows[0]["is_leftmost"] is False
    assert rows[0]["is_uppermost"] is True


def test_selection_is_reproducible(tmp_path: Path) -> None:
    manifest = Manifest.model_validate({
        "name": "ds", "modality": "other", "root": ".",
        "images": {"glob": "*.png"},
        "masks": [{"encoding": "binary", "path": "{stem}_m.png", "class": "lesion"}],
        "classes": [{"name": "lesion"}],
        "targets": {"max_single_per_image": 3},
    })
    rows = [obj(f"lesion-{k}", 100 * k, k / 10, 0.5) for k in range(1, 9)]
    for row in rows:
        row["class_count"] = 8
    mark_relations(rows, THRESHOLDS)
    first = select_targets(rows, manifest, random.Random("0:ds/case"))
    second = select_targets(rows, manifest, random.Random("0:ds/case"))
    assert first == second
    assert sum(t["task"] == "single" for t in first) == 3
    assert sum(t["task"] == "multi" for t in first) == 1


def test_overlapping_spans_are_not_left_or_right() -> None:
    wide = obj("lesion-1", 4000, 0.55, 0.6, half=30)
    satellite = obj("lesion-2", 300, 0.40, 0.2)
    rows = [wide, satellite]
    mark_relations(rows, THRESHOLDS)
    assert wide["is_rightmost"] is False
    assert satellite["is_leftmost"] is False
    assert satellite["is_uppermost"] is True


def test_radiology_targets_have_no_image_side_relations() -> None:
    manifest = Manifest.model_validate({
        "name": "ds", "modality": "mri", "root": ".", "orientation": "radiological",
        "images": {"glob": "*.png"},
        "masks": [{"encoding": "binary", "path": "{stem}_m.png", "class": "lesion"}],
        "classes": [{"name": "lesion"}],
        "targets": {"max_relation_per_class": 6},
    })
    rows = [obj("lesion-1", 1000, 0.2, 0.2), obj("lesion-2", 300, 0.8, 0.8)]
    mark_relations(rows, THRESHOLDS)
    targets = select_targets(rows, manifest, random.Random(0))
    relations = {t["relation"] for t in targets if t["task"] == "relation"}
    assert relations == {"largest", "smallest", "uppermost", "lowermost"}


def test_crowded_class_samples_only_singleable_objects() -> None:
    manifest = Manifest.model_validate({
        "name": "ds", "modality": "other", "root": ".",
        "images": {"glob": "*.png"},
        "masks": [{"encoding": "binary", "path": "{stem}_m.png", "class": "lesion"}],
        "classes": [{"name": "lesion"}],
        "targets": {"max_single_per_image": 3, "multi": False, "relation": False},
    })
    rows = [obj(f"lesion-{k}", 100, k / 10, 0.5) for k in range(1, 9)]
    for row in rows:
        row["singleable"] = row["object_id"] in ("lesion-2", "lesion-5")
    targets = select_targets(rows, manifest, random.Random(0))
    assert sorted(t["object_ids"][0] for t in targets) == ["lesion-2", "lesion-5"]
