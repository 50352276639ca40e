"""Label Studio interchange: export a pack as import tasks, read an export back as decisions.

Formats follow Label Studio's documented JSON task format. A task has ``data`` and
``predictions``. A rectangle region is a ``rectanglelabels`` result whose ``value`` contains
``x``, ``y``, ``width`` and ``height`` in percent of the image size, with the image's
``original_width`` and ``original_height`` in pixels. An exported task carries its
``annotations``, each with a ``result`` list, ``completed_by`` (a user id, or a user object
in newer exports) and ``was_cancelled``.

The labeling configuration written beside the tasks names the controls this module
reads: ``box`` (RectangleLabels), ``verdict`` (Choices) and ``comment`` (TextArea).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from medground.audit.models import (
    VERDICT_LABELS,
    VERDICTS,
    Decision,
    DecisionsFile,
    PackItem,
    PackManifest,
    PackTarget,
    Verdict,
)
from medground.audit.runs import AuditInputError

logger = logging.getLogger(__name__)

BOX_CONTROL = "box"
VERDICT_CONTROL = "verdict"
COMMENT_CONTROL = "comment"
IMAGE_OBJECT = "image"
# A reviewer's box counts as the pack's box when every coordinate is within this many pixels.
BOX_TOLERANCE_PX = 0.5

# Both the stored key ("wrong_box") and the shown label ("Wrong box") map to the verdict.
_VERDICT_BY_TEXT: dict[str, Verdict] = {
    text.casefold(): v for v in VERDICTS for text in (v, VERDICT_LABELS[v])
}


def labeling_config(classes: Sequence[str]) -> str:
    """Return the Label Studio labeling configuration (XML) for a pack's classes."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in sorted(set(classes)))
    choices = "\n".join(
        f'    <Choice value={quoteattr(VERDICT_LABELS[v])} hotkey="{i + 1}"/>'
        for i, v in enumerate(VERDICTS)
    )
    return f"""<View>
  <Header value="$query"/>
  <Image name="{IMAGE_OBJECT}" value="$image" zoom="true"/>
  <RectangleLabels name="{BOX_CONTROL}" toName="{IMAGE_OBJECT}" canRotate="false">
{labels}
  </RectangleLabels>
  <Choices name="{VERDICT_CONTROL}" toName="{IMAGE_OBJECT}" choice="single-radio" required="true">
{choices}
  </Choices>
  <TextArea name="{COMMENT_CONTROL}" toName="{IMAGE_OBJECT}" placeholder="comment"/>
</View>
"""


def target_to_region(target: PackTarget, item: PackItem, index: int) -> dict[str, Any]:
    """Convert a pixel box (half-open xyxy) into a Label Studio rectangle region in percent."""
    x0, y0, x1, y1 = target.bbox_xyxy
    width, height = item.image.width, item.image.height
    return {
        "id": f"{item.item_id}-t{index + 1}",
        "type": "rectanglelabels",
        "from_name": BOX_CONTROL,
        "to_name": IMAGE_OBJECT,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x0 / width,
            "y": 100.0 * y0 / height,
            "width": 100.0 * (x1 - x0) / width,
            "height": 100.0 * (y1 - y0) / height,
            "rotation": 0,
            "rectanglelabels": [target.class_name],
        },
    }


def export_tasks(manifest: PackManifest, image_url_prefix: str) -> list[dict[str, Any]]:
    """Build Label Studio import tasks: the clean image, the query and the boxes as predictions.

    Args:
        manifest: The pack.
        image_url_prefix: Prepended to the pack-relative image path (``images/...``) to
            form the URL Label Studio loads, e.g. the address where the pack folder is served.

    Returns:
        One task per pack item. Whether an item was accepted or rejected is left out so
        that the review stays blind.
    """
    tasks = []
    for item in manifest.items:
        tasks.append(
            {
                "data": {
                    "image": image_url_prefix + item.image.clean,
                    "query": item.query,
                    "pack_id": manifest.pack_id,
                    "item_id": item.item_id,
                    "record_id": item.record_id,
                    "dataset": item.dataset,
                    "task": item.task,
                },
                "predictions": [
                    {
                        "model_version": f"medground {manifest.pack_id}",
                        "result": [
                            target_to_region(target, item, index)
                            for index, target in enumerate(item.targets)
                        ],
                    }
                ],
            }
        )
    return tasks


def region_to_target(region: dict[str, Any], item: PackItem, where: str) -> PackTarget:
    """Convert a Label Studio rectangle region back into a pixel box of the original image.

    Raises:
        AuditInputError: If the region is rotated, has no label, or was drawn on an image
            of another size.
    """
    value = region.get("value") or {}
    width = region.get("original_width", item.image.width)
    height = region.get("original_height", item.image.height)
    if (width, height) != (item.image.width, item.image.height):
        raise AuditInputError(
            f"{where}: region drawn on a {width}x{height} image but {item.item_id} is "
            f"{item.image.width}x{item.image.height}; export the tasks again from this pack"
        )
    if float(value.get("rotation") or 0) != 0.0:
        raise AuditInputError(
            f"{where}: rotated box (rotation {value['rotation']}) cannot be stored as "
            "bbox_xyxy; set its rotation to 0 in Label Studio and export again"
        )
    labels = value.get("rectanglelabels") or []
    if len(labels) != 1:
        raise AuditInputError(f"{where}: a box needs exactly one label, got {labels!r}")
    try:
        x0 = float(value["x"]) * width / 100.0
        y0 = float(value["y"]) * height / 100.0
        x1 = x0 + float(value["width"]) * width / 100.0
        y1 = y0 + float(value["height"]) * height / 100.0
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditInputError(
            f"{where}: box value needs numeric x, y, width, height: {value!r}"
        ) from exc
    return PackTarget.model_validate({"class": labels[0], "bbox_xyxy": (x0, y0, x1, y1)})


def same_boxes(found: Sequence[PackTarget], expected: Sequence[PackTarget]) -> bool:
    """Tell whether two box lists match by class and coordinates, ignoring order."""
    if len(found) != len(expected):
        return False

    def order(target: PackTarget) -> tuple[str, tuple[float, ...]]:
        return target.class_name, tuple(target.bbox_xyxy)

    for a, b in zip(sorted(found, key=order), sorted(expected, key=order), strict=True):
        if a.class_name != b.class_name:
            return False
        if (
            max(abs(p - q) for p, q in zip(a.bbox_xyxy, b.bbox_xyxy, strict=True))
            > BOX_TOLERANCE_PX
        ):
            return False
    return True


def reviewer_name(completed_by: Any) -> str:
    """Name a Label Studio annotator: a user object's e-mail, else ``label-studio-user-<id>``."""
    if isinstance(completed_by, dict):
        if completed_by.get("email"):
            return str(completed_by["email"])
        completed_by = completed_by.get("id")
    if completed_by is None:
        return "label-studio-user-unknown"
    return f"label-studio-user-{completed_by}"


@dataclass
class ImportSummary:
    """Counts of what an import read and skipped."""

    annotations: int = 0
    cancelled: int = 0
    without_verdict: int = 0
    corrected_boxes: int = 0


def import_export(
    export_path: Path, manifest: PackManifest
) -> tuple[list[DecisionsFile], ImportSummary]:
    """Read a Label Studio JSON export of a pack's tasks as one decisions file per annotator.

    An annotation without any box keeps the pack's boxes, because Label Studio copies the
    predictions into an annotation only when prelabeling is on. Cancelled (skipped)
    annotations and annotations without a verdict are counted and left out.

    Raises:
        AuditInputError: If the file is not a Label Studio JSON export of this pack, or a
            verdict or box is invalid.
    """
    try:
        tasks = json.loads(export_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AuditInputError(f"Label Studio export not found: {export_path}") from exc
    except json.JSONDecodeError as exc:
        raise AuditInputError(
            f"{export_path}: invalid JSON ({exc.msg} at line {exc.lineno})"
        ) from exc
    if not isinstance(tasks, list):
        raise AuditInputError(
            f"{export_path}: expected a JSON list of tasks (Label Studio's 'JSON' export "
            f"format), got {type(tasks).__name__}"
        )

    items = {item.item_id: item for item in manifest.items}
    by_reviewer: dict[str, dict[str, Decision]] = {}
    summary = ImportSummary()
    for position, task in enumerate(tasks):
        item = _task_item(task, position, items, manifest.pack_id, export_path)
        for annotation in task.get("annotations") or []:
            summary.annotations += 1
            where = f"{export_path}: task {task.get('id', position)} ({item.item_id})"
            decision = _annotation_decision(annotation, item, where, summary)
            if decision is None:
                continue
            reviewer = reviewer_name(annotation.get("completed_by"))
            previous = by_reviewer.setdefault(reviewer, {}).get(item.item_id)
            if previous is not None:
                logger.warning(
                    "%s: %s annotated the item twice; keeping the later annotation",
                    where,
                    reviewer,
                )
                if (previous.decided_at or "") > (decision.decided_at or ""):
                    continue
            by_reviewer[reviewer][item.item_id] = decision

    files = [
        DecisionsFile(
            pack_id=manifest.pack_id,
            reviewer=reviewer,
            source="label-studio",
            n_items=len(manifest.items),
            decisions=sorted(decisions.values(), key=lambda d: d.item_id),
        )
        for reviewer, decisions in sorted(by_reviewer.items())
    ]
    return files, summary


def _task_item(
    task: Any, position: int, items: dict[str, PackItem], pack_id: str, export_path: Path
) -> PackItem:
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        raise AuditInputError(f"{export_path}: task at position {position} has no 'data' object")
    if data.get("pack_id") != pack_id:
        raise AuditInputError(
            f"{export_path}: task {task.get('id', position)} belongs to pack "
            f"{data.get('pack_id')!r}, not {pack_id}; pass the pack it was exported from"
        )
    item = items.get(str(data.get("item_id")))
    if item is None:
        raise AuditInputError(
            f"{export_path}: task {task.get('id', position)} names item "
            f"{data.get('item_id')!r}, which pack {pack_id} does not have"
        )
    return item


def _annotation_decision(
    annotation: dict[str, Any], item: PackItem, where: str, summary: ImportSummary
) -> Decision | None:
    if annotation.get("was_cancelled"):
        summary.cancelled += 1
        return None

    verdict: Verdict | None = None
    comments: list[str] = []
    boxes: list[PackTarget] = []
    for region in annotation.get("result") or []:
        control = region.get("from_name")
        value = region.get("value") or {}
        if control == VERDICT_CONTROL:
            verdict = _parse_verdict(value.get("choices") or [], where)
        elif control == COMMENT_CONTROL:
            comments.extend(str(text) for text in value.get("text") or [])
        elif control == BOX_CONTROL and region.get("type") == "rectanglelabels":
            boxes.append(region_to_target(region, item, where))

    if verdict is None:
        summary.without_verdict += 1
        logger.warning("%s: annotation %s has no verdict; skipped", where, annotation.get("id"))
        return None

    corrected = None
    if boxes and not same_boxes(boxes, item.targets):
        corrected = boxes
        summary.corrected_boxes += 1
    return Decision(
        item_id=item.item_id,
        record_id=item.record_id,
        kind=item.kind,
        dataset=item.dataset,
        task=item.task,
        stage=item.stage,
        rule_id=item.rule_id,
        verdict=verdict,
        comment="\n".join(comments),
        decided_at=annotation.get("updated_at") or annotation.get("created_at"),
        corrected_targets=corrected,
    )


def _parse_verdict(choices: Sequence[Any], where: str) -> Verdict:
    if len(choices) != 1:
        raise AuditInputError(f"{where}: expected one verdict choice, got {list(choices)!r}")
    verdict = _VERDICT_BY_TEXT.get(str(choices[0]).casefold())
    if verdict is None:
        valid = ", ".join(VERDICT_LABELS[v] for v in VERDICTS)
        raise AuditInputError(f"{where}: unknown verdict {choices[0]!r}; valid choices: {valid}")
    return verdict


def decisions_file_name(decisions: DecisionsFile) -> str:
    """Return the file name the review page would give this reviewer's download."""
    slug = re.sub(r"[^a-z0-9]+", "-", decisions.reviewer.lower()).strip("-") or "reviewer"
    return f"decisions-{decisions.pack_id}-{slug}.json"
