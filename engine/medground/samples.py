"""Candidates to records and to rows of the sample table that rules run over."""

from __future__ import annotations

from typing import Any

from medground import __version__
from medground.config.loader import LoadedManifest
from medground.extract import ImageResult
from medground.synth.base import QueryCandidate
from medground.targets import RELATIONS

TARGET_CUES = ("size", "position", "vertical", "horizontal", "image_side", "patient_side", "shape")
_OBJECT_MEASURES = (
    "area",
    "area_frac",
    "cx_frac",
    "cy_frac",
    "eccentricity",
    "solidity",
    "circularity",
    "evidence_cnr",
    "evidence_edge",
)
JUDGE_SKIPPED = {"verdict": "skipped", "reason": "no judge configured"}


def target_cues(objects: dict[str, dict[str, Any]], target: dict[str, Any]) -> dict[str, Any]:
    """Return the cues a target's query may state (empty for all-objects targets)."""
    if target["task"] == "multi":
        return {}
    row = objects[target["object_ids"][0]]
    cues = {key: row.get(key) for key in TARGET_CUES}
    cues.update(
        {f"{k}_unique": row.get(f"{k}_unique") for k in ("size", "position", "image_side", "shape")}
    )
    cues["touches_border"] = row.get("touches_border")
    return cues


def build_record(
    loaded: LoadedManifest,
    result: ImageResult,
    target: dict[str, Any],
    candidate: QueryCandidate,
    query_index: int,
    seed: int,
) -> dict[str, Any]:
    """Assemble the output record of one candidate (verification filled in later)."""
    manifest = loaded.manifest
    objects = {o["object_id"]: o for o in result.objects}
    if target["task"] == "multi" or len(candidate.object_ids) > 1:
        entries = [
            {"class": objects[oid]["class"], "bbox_xyxy": _box(objects[oid]), "object_ids": [oid]}
            for oid in candidate.object_ids
        ]
    else:
        oid = candidate.object_ids[0]
        entries = [
            {"class": objects[oid]["class"], "bbox_xyxy": _box(objects[oid]), "object_ids": [oid]}
        ]
    cues = {
        k: v for k, v in (target.get("cues") or {}).items() if k in TARGET_CUES and v is not None
    }
    cues["class_count"] = target["class_count"]
    if target.get("relation"):
        cues["relation"] = target["relation"]
    return {
        "id": f"{result.image_key}/{target['target_id']}/q{query_index}",
        "dataset": manifest.name,
        "modality": manifest.modality,
        "anatomy": manifest.anatomy,
        "split": None,
        "image": {
            "path": result.image_path,
            "width": result.width,
            "height": result.height,
            "sha256": result.sha256,
        },
        "source": {
            "root": str(loaded.root),
            "image": result.image,
            "masks": result.masks,
            "slice": result.slice,
        },
        "query": candidate.query,
        "task": candidate.task,
        "targets": entries,
        "cues": cues,
        "verification": {
            "format": {"verdict": "pass"},
            "rules": {"verdict": "pass"},
            "judge": dict(JUDGE_SKIPPED),
        },
        "provenance": {
            "manifest": manifest.name,
            "manifest_sha256": loaded.sha256,
            "synthesizer": candidate.synthesizer,
            "model": candidate.model,
            "prompt_sha256": candidate.prompt_sha256,
            "template_id": candidate.template_id,
            "seed": seed,
            "engine_version": __version__,
        },
    }


def sample_row(
    record: dict[str, Any],
    result: ImageResult,
    target: dict[str, Any],
    orientation: str,
    class_bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Return the sample-table row of a record (see ``verify.columns``).

    ``class_bounds`` is the target class's ``area_fraction_bounds`` from the manifest.
    Query claims and ``claims_unique`` are added later, over the whole batch.
    """
    boxes = [t["bbox_xyxy"] for t in record["targets"]]
    widths = [b[2] - b[0] for b in boxes]
    heights = [b[3] - b[1] for b in boxes]
    image_area = result.width * result.height
    objects = {o["object_id"]: o for o in result.objects}
    first = objects[record["targets"][0]["object_ids"][0]]
    cues = target.get("cues") or {}
    row: dict[str, Any] = {
        "sample_id": record["id"],
        "image_key": result.image_key,
        "dataset": record["dataset"],
        "modality": record["modality"],
        "anatomy": record["anatomy"],
        "orientation": orientation,
        "task": record["task"],
        "class": target["class"],
        "query": record["query"],
        "relation": target.get("relation"),
        "image_w": result.width,
        "image_h": result.height,
        "n_targets": len(boxes),
        "expected_count": target["class_count"] if record["task"] == "multi" else 1,
        "class_count": target["class_count"],
        "min_x0": min(b[0] for b in boxes),
        "min_y0": min(b[1] for b in boxes),
        "max_x1": max(b[2] for b in boxes),
        "max_y1": max(b[3] for b in boxes),
        "min_box_w": min(widths),
        "min_box_h": min(heights),
        "min_box_area": min(w * h for w, h in zip(widths, heights, strict=True)),
        "max_box_area_frac": max(w * h for w, h in zip(widths, heights, strict=True)) / image_area,
        "touches_border": any(
            objects[t["object_ids"][0]]["touches_border"] for t in record["targets"]
        ),
    }
    for key in _OBJECT_MEASURES:
        row[key] = first.get(key)
    for key in TARGET_CUES:
        row[key] = cues.get(key)
    for key in ("size", "position", "image_side", "shape"):
        row[f"{key}_unique"] = cues.get(f"{key}_unique")
    row["object_id"] = first["object_id"]
    for relation in RELATIONS:
        flag = first.get(f"is_{relation}")
        row[f"is_{relation}"] = None if record["task"] == "multi" else bool(flag)
    row["class_min_area_frac"], row["class_max_area_frac"] = class_bounds or (None, None)
    return row


def _box(obj: dict[str, Any]) -> list[int]:
    return [obj["x0"], obj["y0"], obj["x1"], obj["y1"]]
