"""Read model predictions written in any export format's layout or markup.

A prediction file contains one row per evaluated record: JSON Lines, a JSON array, or (for
``hf``) parquet. Each row names its record with ``id`` (``record_id`` for RefCOCO refs), or
rows are paired with the ids of an export file by position (``pair_by_order``), which is
how LLaMA-Factory's ``generated_predictions.jsonl`` must be read because it has no ids.

Where the boxes come from depends on the format:

- ``json``: ``boxes: [[x0, y0, x1, y1], ...]`` in the space the caller declares.
- ``medground``: ``pred_bboxes``, ``boxes`` or ``gt_bboxes``, pixels.
- ``hf``: ``bbox_xyxy`` or ``boxes``, pixels.
- ``refcoco``: ``bbox: [x, y, w, h]`` or ``bboxes: [[x, y, w, h], ...]``, pixels; or the
  export folder itself (``instances.json`` + ``grefs(medground).json``).
- ``ms-swift``: model text parsed with ``markup`` when a row has any of the text keys
  below (``swift infer`` result files keep the input ``objects``, which hold the ground
  truth, so the model's ``response`` must win); otherwise ``objects.bbox`` with its
  ``bbox_type`` (``real`` = pixels, ``norm1``).
- ``llama-factory``: model text parsed with ``markup``.
- ``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``, ``internvl``, ``florence-2``: model text in
  that markup.

Model text is read from the first present key of ``response``, ``predict``,
``prediction``, ``output``, ``text``, ``answer``, else from the last assistant turn of
``conversations`` or ``messages``, else (Florence-2) from ``suffix``. Feeding an export's
own files back therefore scores the ground truth against itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from medground import boxes as box_ops
from medground.export.markup import MARKUPS, MarkupParseError, get_markup

logger = logging.getLogger(__name__)

TEXT_KEYS = ("response", "predict", "prediction", "output", "text", "answer")
PREDICTION_FORMATS = (
    "json",
    "medground",
    "hf",
    "refcoco",
    "ms-swift",
    "llama-factory",
    *MARKUPS,
)
# Coordinate space each format's numbers are in; None means the caller must declare it.
NATIVE_SPACES: dict[str, str | None] = {
    "json": None,
    "medground": "pixels",
    "hf": "pixels",
    "refcoco": "coco-xywh",
    "ms-swift": "pixels",
    "llama-factory": None,
    **{name: markup.space for name, markup in MARKUPS.items()},
}
_SKIPPED_FILES = {"dataset_info.json", "internvl_meta.json", "instances.json"}
_SWIFT_BBOX_TYPES = {"real": "pixels", "norm1": "norm1", "norm1000": "norm1000"}


class PredictionFileError(ValueError):
    """A prediction file that cannot be read; the message names file, line and key."""


@dataclass
class Prediction:
    """Boxes predicted for one record, still in the coordinate space they were written in."""

    id: str
    location: str
    space: str
    boxes: np.ndarray | None
    error: str | None = None
    resized_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class _Row:
    data: dict[str, Any]
    location: str


def _iter_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(
        candidate
        for candidate in path.rglob("*")
        if candidate.is_file()
        and candidate.suffix in {".jsonl", ".json", ".parquet"}
        and candidate.name not in _SKIPPED_FILES
        and not candidate.name.startswith(("grefs(", "."))
    )
    if not files:
        raise PredictionFileError(f"{path} contains no .jsonl, .json or .parquet prediction file")
    return files


def _iter_rows(path: Path) -> Iterator[_Row]:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        keep = [name for name in table.column_names if name != "image"]
        for index, row in enumerate(table.select(keep).to_pylist(), start=1):
            yield _Row(row, f"{path}:row {index}")
        return
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PredictionFileError(
                f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise PredictionFileError(f"{path}: expected a JSON array of prediction objects")
        for index, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise PredictionFileError(f"{path}: item {index} is not a JSON object")
            yield _Row(row, f"{path}:item {index}")
        return
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PredictionFileError(
                    f"{path}:{line_number}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            if not isinstance(row, dict):
                raise PredictionFileError(f"{path}:{line_number}: not a JSON object")
            yield _Row(row, f"{path}:{line_number}")


def _refcoco_rows(folder: Path) -> list[_Row]:
    instances_path = folder / "instances.json"
    grefs = sorted(folder.glob("grefs(*).json"))
    if not instances_path.is_file() or not grefs:
        raise PredictionFileError(
            f"{folder} is not a RefCOCO export: expected instances.json and grefs(*).json"
        )
    instances = json.loads(instances_path.read_text(encoding="utf-8"))
    boxes_by_ann = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
    rows = []
    for index, ref in enumerate(json.loads(grefs[0].read_text(encoding="utf-8")), start=1):
        ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        rows.append(
            _Row(
                {"id": ref["record_id"], "bboxes": [boxes_by_ann[a] for a in ann_ids]},
                f"{grefs[0]}:item {index}",
            )
        )
    return rows


def _model_text(row: dict[str, Any]) -> str | None:
    for key in TEXT_KEYS:
        if isinstance(row.get(key), str):
            return row[key]
    for key, role_key, text_key, roles in (
        ("conversations", "from", "value", {"gpt", "assistant"}),
        ("messages", "role", "content", {"assistant"}),
    ):
        turns = row.get(key)
        if isinstance(turns, list):
            replies = [
                turn[text_key]
                for turn in turns
                if isinstance(turn, dict) and turn.get(role_key) in roles
            ]
            if replies and isinstance(replies[-1], str):
                return replies[-1]
    if isinstance(row.get("suffix"), str):
        return row["suffix"]
    return None


def _box_list(value: Any, location: str, key: str) -> np.ndarray:
    try:
        return box_ops.as_boxes(value if value else np.zeros((0, 4)))
    except (ValueError, TypeError) as exc:
        raise PredictionFileError(
            f"{location}: key '{key}' is not a list of 4-number boxes: {exc}"
        ) from exc


def _boxes_from_keys(row: _Row, keys: tuple[str, ...]) -> np.ndarray | None:
    for key in keys:
        if key in row.data:
            return _box_list(row.data[key], row.location, key)
    return None


def _parse_text(row: _Row, markup_name: str) -> tuple[np.ndarray | None, str | None]:
    text = _model_text(row.data)
    if text is None:
        return None, (
            f"no model text: none of {', '.join(TEXT_KEYS)}, conversations or messages is present"
        )
    try:
        return get_markup(markup_name).parse(text), None
    except MarkupParseError as exc:
        return None, f"{exc} in {text[:120]!r}"


def _row_prediction(
    row: _Row, record_id: str, format_name: str, markup: str | None, space: str | None
) -> Prediction:
    data = row.data
    resized = None
    if "resized_width" in data and "resized_height" in data:
        resized = (int(data["resized_width"]), int(data["resized_height"]))

    boxes: np.ndarray | None = None
    error: str | None = None
    native = NATIVE_SPACES[format_name]
    if format_name == "json":
        boxes = _boxes_from_keys(row, ("boxes",))
        if boxes is None:
            raise PredictionFileError(f"{row.location}: missing key 'boxes'")
    elif format_name == "medground":
        boxes = _boxes_from_keys(row, ("pred_bboxes", "boxes", "gt_bboxes"))
        if boxes is None:
            raise PredictionFileError(
                f"{row.location}: none of 'pred_bboxes', 'boxes', 'gt_bboxes' is present"
            )
    elif format_name == "hf":
        boxes = _boxes_from_keys(row, ("bbox_xyxy", "boxes"))
        if boxes is None:
            raise PredictionFileError(f"{row.location}: missing key 'bbox_xyxy' or 'boxes'")
    elif format_name == "refcoco":
        if "bboxes" in data:
            boxes = _box_list(data["bboxes"], row.location, "bboxes")
        elif "bbox" in data:
            boxes = _box_list(data["bbox"], row.location, "bbox")
        else:
            raise PredictionFileError(f"{row.location}: missing key 'bbox' or 'bboxes'")
    elif (
        format_name == "ms-swift"
        and isinstance(data.get("objects"), dict)
        and not any(isinstance(data.get(key), str) for key in TEXT_KEYS)
    ):
        objects = data["objects"]
        boxes = _box_list(objects.get("bbox"), row.location, "objects.bbox")
        bbox_type = objects.get("bbox_type", "real")
        if bbox_type not in _SWIFT_BBOX_TYPES:
            raise PredictionFileError(
                f"{row.location}: objects.bbox_type {bbox_type!r} is not one of "
                f"{', '.join(_SWIFT_BBOX_TYPES)}"
            )
        native = _SWIFT_BBOX_TYPES[bbox_type]
    else:
        markup_name = markup if format_name in {"ms-swift", "llama-factory"} else format_name
        if markup_name is None:
            raise PredictionFileError(
                f"{row.location}: format {format_name!r} contains model text; pass --markup "
                f"({', '.join(MARKUPS)}) to say which model wrote it"
            )
        native = get_markup(markup_name).space
        boxes, error = _parse_text(row, markup_name)

    declared = space or native
    if declared is None:
        raise PredictionFileError(
            f"format {format_name!r} does not fix a coordinate space; pass --space "
            f"({', '.join(box_ops.SPACES)})"
        )
    return Prediction(record_id, row.location, declared, boxes, error, resized)


def read_predictions(
    path: Path,
    format_name: str,
    markup: str | None = None,
    space: str | None = None,
    pair_by_order: Path | None = None,
) -> list[Prediction]:
    """Read every prediction row under ``path``.

    Args:
        path: a prediction file, or a folder of them (an export folder works).
        format_name: one of :data:`PREDICTION_FORMATS`.
        markup: box markup of model text for ``ms-swift`` and ``llama-factory``.
        space: coordinate space overriding the format's own; required for ``json``.
        pair_by_order: an export file whose row ``id``s are given to prediction rows by
            position, for prediction files without ids.

    Raises:
        PredictionFileError: naming the file, line and key that cannot be read.
    """
    if format_name not in PREDICTION_FORMATS:
        raise PredictionFileError(
            f"unknown prediction format {format_name!r}; valid formats: "
            f"{', '.join(PREDICTION_FORMATS)}"
        )
    if space is not None and space not in box_ops.SPACES:
        raise PredictionFileError(
            f"unknown coordinate space {space!r}; valid spaces: {', '.join(box_ops.SPACES)}"
        )
    if format_name == "json" and space is None:
        raise PredictionFileError(
            "plain JSON boxes carry no coordinate space; pass --space "
            f"({', '.join(box_ops.SPACES)}). It is never guessed"
        )
    if markup is not None and markup not in MARKUPS:
        raise PredictionFileError(
            f"unknown box markup {markup!r}; valid markups: {', '.join(MARKUPS)}"
        )

    if format_name == "refcoco" and path.is_dir():
        rows = _refcoco_rows(path)
    else:
        rows = [row for file in _iter_files(path) for row in _iter_rows(file)]

    ordered_ids: list[str] | None = None
    if pair_by_order is not None:
        ordered_ids = [str(row.data["id"]) for row in _iter_rows(pair_by_order)]
        if len(ordered_ids) != len(rows):
            raise PredictionFileError(
                f"--pair-by-order {pair_by_order} has {len(ordered_ids)} rows but the "
                f"predictions have {len(rows)}; pass the export file the predictions were "
                "generated from"
            )

    predictions = []
    for index, row in enumerate(rows):
        if ordered_ids is not None:
            record_id = ordered_ids[index]
        elif "id" in row.data or "record_id" in row.data:
            record_id = str(row.data.get("id", row.data.get("record_id")))
        else:
            raise PredictionFileError(
                f"{row.location}: no 'id'; add the record id to each row or pass "
                "--pair-by-order with the export file the predictions follow"
            )
        predictions.append(_row_prediction(row, record_id, format_name, markup, space))
    logger.debug("read %d predictions from %s", len(predictions), path)
    return predictions
