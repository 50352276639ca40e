"""Objects to targets: single objects, all objects of a class, relational picks.

A relation is marked on an object only when it is clearly true among the objects of its
class (see ``relations`` in ``rules/cues.yaml``), so "the larger polyp" is never written
about two polyps of nearly equal size.
"""

from __future__ import annotations

import random
from typing import Any

from medground.config.cues import RelationThresholds
from medground.config.manifest import Manifest

RELATIONS = ("largest", "smallest", "leftmost", "rightmost", "uppermost", "lowermost")

# relation -> (object column, True when the extreme is the maximum, axis of the margin)
_RELATION_KEYS = {
    "largest": ("area", True, None),
    "smallest": ("area", False, None),
    "leftmost": ("cx_frac", False, "x"),
    "rightmost": ("cx_frac", True, "x"),
    "uppermost": ("cy_frac", False, "y"),
    "lowermost": ("cy_frac", True, "y"),
}


def mark_relations(rows: list[dict[str, Any]], thresholds: RelationThresholds) -> None:
    """Set ``is_<relation>`` on objects where the relation is clearly true in their class."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row)
    for group in by_class.values():
        if len(group) < 2:
            continue
        for relation, (column, maximum, axis) in _RELATION_KEYS.items():
            ordered = sorted(group, key=lambda r: r[column], reverse=maximum)
            first, second = ordered[0][column], ordered[1][column]
            if axis is None:
                big, small = (first, second) if maximum else (second, first)
                clear = small > 0 and big / small >= thresholds.size_ratio
                # A fragment cut by the image border is smallest only in what is visible;
                # calling it "the smallest" would describe the crop, not the object.
                if relation == "smallest" and ordered[0]["touches_border"]:
                    clear = False
            else:
                clear = abs(first - second) >= thresholds.position_margin
                # "The left one" must not name a box whose span covers the other's centre,
                # e.g. a wide lesion beside a small satellite above it.
                lead, other = ordered[0], ordered[1]
                low, high = ("x0", "x1") if axis == "x" else ("y0", "y1")
                centre = "cx" if axis == "x" else "cy"
                if lead[low] <= other[centre] <= lead[high] or (
                    other[low] <= lead[centre] <= other[high]
                ):
                    clear = False
            ordered[0][f"is_{relation}"] = clear


def select_targets(
    rows: list[dict[str, Any]], manifest: Manifest, rng: random.Random
) -> list[dict[str, Any]]:
    """Choose the targets of one image; ``rows`` are its objects with relations marked.

    Singles are capped at ``targets.max_single_per_image`` and relations at
    ``targets.max_relation_per_class``, sampled with ``rng`` so reruns choose the same.
    """
    spec = manifest.targets
    targetable = {c.name for c in manifest.classes if c.targets}
    rows = [r for r in rows if r["class"] in targetable]
    targets: list[dict[str, Any]] = []

    if spec.single:
        chosen = rows
        if len(rows) > spec.max_single_per_image:
            # With more objects than the cap, sample among those a cue can single out
            # (``singleable``, set by the caller); the others would only be rejected.
            pool = [row for row in rows if row.get("singleable", True)]
            count = min(spec.max_single_per_image, len(pool))
            picked = sorted(rng.sample(range(len(pool)), count))
            chosen = [pool[i] for i in picked]
        for row in chosen:
            targets.append(_target("single", row["class"], [row], None))

    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row)
    for name, group in by_class.items():
        if len(group) < 2:
            continue
        # The cap bounds the boxes of one all-objects target; a relation such as "the
        # largest cell" names one object, so it stays available in crowded classes.
        if spec.multi and len(group) <= spec.max_multi_objects:
            targets.append(_target("multi", name, group, None))
        if spec.relation and spec.max_relation_per_class > 0:
            flags = [(relation, f"is_{relation}") for relation in _allowed_relations(manifest)]
            options = [
                (relation, row) for relation, flag in flags for row in group if row.get(flag)
            ]
            if len(options) > spec.max_relation_per_class:
                picked = sorted(rng.sample(range(len(options)), spec.max_relation_per_class))
                options = [options[i] for i in picked]
            for relation, row in options:
                targets.append(_target("relation", name, [row], relation))

    for number, target in enumerate(targets):
        target["target_id"] = f"t{number}"
    return targets


def _allowed_relations(manifest: Manifest) -> tuple[str, ...]:
    """Relations a query may use: no image left/right where patient sides are defined.

    On radiology images "the leftmost" is ambiguous between the image's and the patient's
    left, so horizontal relations are not offered there; single-object phrasings name the
    patient's side instead.
    """
    if manifest.orientation != "unknown" or manifest.volume is not None:
        return tuple(r for r in RELATIONS if r not in ("leftmost", "rightmost"))
    return RELATIONS


def _target(
    task: str, class_name: str, rows: list[dict[str, Any]], relation: str | None
) -> dict[str, Any]:
    return {
        "image_key": rows[0]["image_key"],
        "task": task,
        "class": class_name,
        "object_ids": [r["object_id"] for r in rows],
        "boxes": [[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rows],
        "relation": relation,
        "class_count": rows[0]["class_count"],
    }
