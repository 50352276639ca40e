"""Grounding evaluation: ``mgr eval --pred PRED --gt GT --out DIR``.

Predictions are read in a declared coordinate space (the format's own, or ``--space``),
never a guessed one, and mapped back to pixel ``xyxy`` of the original image before
scoring against the records' ``bbox_xyxy``.

Scoring:

- A record with one target box is scored by the IoU of the **first** predicted box, the
  model's top-ranked box. Extra boxes are ignored but counted (``extra_box_records``), because
  taking the best of several boxes would reward a model that sprays boxes. Acc@IoU 0.3, 0.5
  and 0.7 and mean IoU are reported; a missing, empty or unparseable prediction counts as
  IoU 0.
- A record with several target boxes is scored by one-to-one matching at IoU 0.5
  (:func:`medground.boxes.match_boxes`); precision, recall and F1 are micro-averaged over
  records (summed true positives, predicted boxes and target boxes).
- Baselines on the same records: the centre box (the middle half of the image in each
  direction) and, per class, the mean relative box of the train split's targets of that
  class, scaled to each image. A multi-box record gets one baseline box per distinct class.

A sanity check compares the predictions with their images and targets and warns when
most predicted boxes fall outside their image; when predictions declared as pixels all lie
within 0..1000, overshoot images smaller than 1000 px and fit the targets better read as
the 0..1000 grid; when pixel predictions all lie within 0..1 (fractions); and when
0..1000-grid predictions exceed 1000.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from medground import boxes as box_ops
from medground.export.common import ResizeSettings, target_boxes, target_labels
from medground.export.markup import MARKUPS
from medground.export.predictions import (
    PREDICTION_FORMATS,
    Prediction,
    PredictionFileError,
    read_predictions,
)
from medground.export.resize_options import resize_options
from medground.export.runs import (
    RecordFileError,
    load_runs,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

ACC_THRESHOLDS = (0.3, 0.5, 0.7)
MATCH_IOU = 0.5
CURVE_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 20))
# Predicted boxes may overshoot the image by this fraction of its size before they count
# as outside, so rounding at the border does not trip the check.
OUTSIDE_TOLERANCE = 0.01
OUTSIDE_WARN_FRACTION = 0.5
# Pixel predictions within 0..1000 that overshoot small images look like the 0..1000 grid
# when reading them as the grid raises their mean IoU with the targets by this much. An
# ordinary offset error overshoots too, but it fits worse when read as the grid.
GRID_FIT_MARGIN = 0.1
BREAKDOWN_KEYS = ("dataset", "modality", "class", "task")
EVAL_SPLITS = ("train", "val", "test", "all")


class EvaluationError(ValueError):
    """An evaluation that cannot run as requested. The message names what to change."""


@dataclass
class RecordResult:
    """Score of one ground-truth record against its prediction."""

    id: str
    dataset: str
    modality: str
    class_key: str
    task: str
    kind: str
    status: str
    iou: float | None
    true_positives: int
    predicted_boxes: int
    target_boxes: int
    extra_boxes: int


def _class_key(record: dict[str, Any]) -> str:
    return "+".join(sorted(set(target_labels(record))))


def score_record(
    record: dict[str, Any], boxes_xyxy: np.ndarray | None, status: str = "ok"
) -> RecordResult:
    """Score predicted pixel boxes (or ``None`` for a miss) against one record's targets."""
    gt = target_boxes(record)
    pred = boxes_xyxy if boxes_xyxy is not None else np.zeros((0, 4))
    if status == "ok" and len(pred) == 0:
        status = "no_box"
    kind = "single" if len(gt) == 1 else "multi"

    iou: float | None = None
    true_positives = 0
    extra = 0
    if kind == "single":
        iou = float(box_ops.box_iou(pred[:1], gt)[0, 0]) if len(pred) else 0.0
        true_positives = 1 if iou >= MATCH_IOU else 0
        extra = max(len(pred) - 1, 0)
    else:
        true_positives = len(box_ops.match_boxes(pred, gt, MATCH_IOU))

    return RecordResult(
        id=record["id"],
        dataset=record["dataset"],
        modality=record["modality"],
        class_key=_class_key(record),
        task=record["task"],
        kind=kind,
        status=status,
        iou=iou,
        true_positives=true_positives,
        predicted_boxes=len(pred),
        target_boxes=len(gt),
        extra_boxes=extra,
    )


def summarise(results: list[RecordResult]) -> dict[str, Any]:
    """Aggregate record results: Acc@IoU and mean IoU for single-box records, P/R/F1 for multi."""
    single = [result.iou for result in results if result.kind == "single"]
    multi = [result for result in results if result.kind == "multi"]
    summary: dict[str, Any] = {"records": len(results), "single": None, "multi": None}

    if single:
        ious = np.array(single, dtype=np.float64)
        summary["single"] = {
            "records": len(ious),
            **{
                f"acc@{threshold}": float(np.mean(ious >= threshold))
                for threshold in ACC_THRESHOLDS
            },
            "mean_iou": float(ious.mean()),
        }
    if multi:
        hits = sum(result.true_positives for result in multi)
        predicted = sum(result.predicted_boxes for result in multi)
        targets = sum(result.target_boxes for result in multi)
        precision = hits / predicted if predicted else 0.0
        recall = hits / targets if targets else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        summary["multi"] = {
            "records": len(multi),
            "true_positives": hits,
            "predicted_boxes": predicted,
            "target_boxes": targets,
            "precision@0.5": precision,
            "recall@0.5": recall,
            "f1@0.5": f1,
        }
    return summary


def accuracy_curve(results: list[RecordResult]) -> list[float]:
    """Return Acc@IoU of single-box records at each of :data:`CURVE_THRESHOLDS`."""
    ious = np.array([r.iou for r in results if r.kind == "single"], dtype=np.float64)
    if len(ious) == 0:
        return []
    return [float(np.mean(ious >= threshold)) for threshold in CURVE_THRESHOLDS]


# --- Baselines ------------------------------------------------------------------------------


def centre_box(width: int, height: int) -> np.ndarray:
    """Return the box covering the middle half of the image in each direction."""
    return np.array([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]])


def train_mean_boxes(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Return the mean 0..1 relative box of each class over the train split's targets."""
    relative: dict[str, list[np.ndarray]] = defaultdict(list)
    for record in records:
        if record.get("split") != "train":
            continue
        width, height = record["image"]["width"], record["image"]["height"]
        for target in record["targets"]:
            relative[target["class"]].append(
                box_ops.xyxy_to_norm1(target["bbox_xyxy"], width, height)[0]
            )
    return {name: np.mean(np.stack(rows), axis=0) for name, rows in relative.items()}


def _baseline_results(
    records: list[dict[str, Any]], means: dict[str, np.ndarray]
) -> dict[str, list[RecordResult]]:
    centre, mean = [], []
    for record in records:
        width, height = record["image"]["width"], record["image"]["height"]
        centre.append(score_record(record, centre_box(width, height)))
        classes = list(dict.fromkeys(target_labels(record)))
        known = [means[name] for name in classes if name in means]
        if known:
            boxes = box_ops.norm1_to_xyxy(np.stack(known), width, height)
            mean.append(score_record(record, boxes))
        else:
            mean.append(score_record(record, None, status="no_train_box"))
    return {"centre_box": centre, "train_mean_box": mean}


# --- Sanity checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedPrediction:
    """A parsed prediction with its record: raw numbers in ``space`` and pixel boxes."""

    space: str
    record: dict[str, Any]
    raw: np.ndarray
    pixels: np.ndarray


def _outside_image(boxes: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """Return which boxes extend past the record's image by more than the tolerance."""
    width, height = record["image"]["width"], record["image"]["height"]
    slack = np.array([width, height]) * OUTSIDE_TOLERANCE
    low = (boxes[:, :2] < -slack).any(axis=1)
    high = (boxes[:, 2:] > np.array([width, height]) + slack).any(axis=1)
    return np.asarray(low | high)


def _mean_target_iou(rows: list[CheckedPrediction], space: str) -> float:
    """Mean over targets of the best IoU with any predicted box, reading boxes in ``space``."""
    best: list[float] = []
    for row in rows:
        width, height = row.record["image"]["width"], row.record["image"]["height"]
        boxes = box_ops.space_to_xyxy(row.raw, space, width, height)
        best.extend(box_ops.box_iou(target_boxes(row.record), boxes).max(axis=1).tolist())
    return float(np.mean(best)) if best else 0.0


def sanity_warnings(checked: list[CheckedPrediction]) -> list[str]:
    """Flag predictions that look like they are in a different space than declared.

    Args:
        checked: every parsed prediction with its record.

    Returns:
        Warning messages, also logged at WARNING.
    """
    warnings: list[str] = []
    boxes_total = sum(len(row.pixels) for row in checked)
    if boxes_total == 0:
        return warnings

    outside = sum(int(_outside_image(row.pixels, row.record).sum()) for row in checked)
    if outside / boxes_total > OUTSIDE_WARN_FRACTION:
        spaces = sorted({row.space for row in checked})
        warnings.append(
            f"{outside} of {boxes_total} predicted boxes fall outside their image after "
            f"reading them as {', '.join(spaces)}; the declared coordinate space is probably "
            "wrong (check --space and --format)"
        )

    pixel_rows = [row for row in checked if row.space == "pixels" and len(row.raw)]
    if pixel_rows:
        raw = np.concatenate([row.raw for row in pixel_rows])
        small_images = all(
            max(row.record["image"]["width"], row.record["image"]["height"]) < 1000
            for row in pixel_rows
        )
        overshooting = sum(int(_outside_image(row.raw, row.record).sum()) for row in pixel_rows)
        if small_images and overshooting and raw.min() >= 0 and raw.max() <= 1000:
            as_pixels = _mean_target_iou(pixel_rows, "pixels")
            as_grid = _mean_target_iou(pixel_rows, "norm1000")
            if as_grid >= as_pixels + GRID_FIT_MARGIN:
                warnings.append(
                    f"predictions declared as pixels all lie within 0..1000, {overshooting} of "
                    f"{len(raw)} boxes overshoot images smaller than 1000 px, and read as the "
                    f"0..1000 grid they fit the targets better (mean IoU {as_grid:.2f} instead "
                    f"of {as_pixels:.2f}); they look like the 0..1000 grid "
                    "(pass --space norm1000)"
                )
        if raw.min() >= 0 and raw.max() <= 1.0:
            warnings.append(
                "predictions declared as pixels all lie within 0..1; they look like "
                "fractions of the image size (pass --space norm1)"
            )

    grid = [row.raw for row in checked if row.space == "norm1000" and len(row.raw)]
    if grid and np.concatenate(grid).max() > 1000:
        warnings.append(
            "predictions declared on the 0..1000 grid contain values above 1000; they may be "
            "pixels (pass --space pixels or --space resized)"
        )

    for message in warnings:
        logger.warning("sanity check: %s", message)
    return warnings


# --- Evaluation -----------------------------------------------------------------------------


def _to_pixels(
    prediction: Prediction, raw: np.ndarray, record: dict[str, Any], resize: ResizeSettings
) -> np.ndarray:
    width, height = record["image"]["width"], record["image"]["height"]
    resized = None
    if prediction.space == "resized":
        computed = resize.resized_size(width, height)
        resized = prediction.resized_size or computed
        if prediction.resized_size and prediction.resized_size != computed:
            logger.warning(
                "%s: resized size %s in the row differs from %s computed with %s; using the row's",
                prediction.location,
                prediction.resized_size,
                resize.describe(),
                computed,
            )
    return box_ops.space_to_xyxy(raw, prediction.space, width, height, resized)


def evaluate(
    gt_records: list[dict[str, Any]],
    predictions: list[Prediction],
    split: str = "test",
    resize: ResizeSettings | None = None,
) -> dict[str, Any]:
    """Score predictions against the ground-truth records of one split.

    Args:
        gt_records: every record of the run(s); the train split feeds the mean-box baseline.
        predictions: read by :func:`medground.export.predictions.read_predictions`.
        split: ``train``, ``val``, ``test`` or ``all``.
        resize: Qwen2.5-VL processor settings for predictions in the ``resized`` space.

    Returns:
        The report: settings, overall and per-group metrics, baselines, the accuracy curve,
        sanity warnings and the lists of missing, unparseable and unmatched predictions.

    Raises:
        EvaluationError: if the split has no records or a record id is predicted twice.
    """
    resize = resize or ResizeSettings()
    if split not in EVAL_SPLITS:
        raise EvaluationError(f"unknown split {split!r}; valid splits: {', '.join(EVAL_SPLITS)}")
    records = [r for r in gt_records if split == "all" or r.get("split") == split]
    if not records:
        present = sorted({str(r.get("split")) for r in gt_records})
        raise EvaluationError(
            f"the ground truth has no records in split {split!r} (splits present: "
            f"{', '.join(present)}); pass --split with one of them, or --split all"
        )

    by_id: dict[str, Prediction] = {}
    for prediction in predictions:
        if prediction.id in by_id:
            raise EvaluationError(
                f"record {prediction.id!r} is predicted twice ({by_id[prediction.id].location} "
                f"and {prediction.location}); keep one prediction per record"
            )
        by_id[prediction.id] = prediction
    evaluated_ids = {record["id"] for record in records}
    unmatched = sorted(set(by_id) - evaluated_ids)
    if unmatched:
        logger.warning(
            "%d predictions name records outside split %r of the ground truth and are "
            "ignored, e.g. %s",
            len(unmatched),
            split,
            unmatched[:3],
        )

    results: list[RecordResult] = []
    unparseable: list[dict[str, str]] = []
    missing: list[str] = []
    checked: list[CheckedPrediction] = []
    for record in records:
        found = by_id.get(record["id"])
        if found is None:
            missing.append(record["id"])
            results.append(score_record(record, None, status="missing"))
            continue
        prediction = found
        if prediction.boxes is None:
            unparseable.append(
                {
                    "id": record["id"],
                    "location": prediction.location,
                    "error": str(prediction.error),
                }
            )
            results.append(score_record(record, None, status="unparseable"))
            continue
        try:
            boxes = _to_pixels(prediction, prediction.boxes, record, resize)
        except ValueError as exc:
            unparseable.append(
                {"id": record["id"], "location": prediction.location, "error": str(exc)}
            )
            results.append(score_record(record, None, status="unparseable"))
            continue
        checked.append(CheckedPrediction(prediction.space, record, prediction.boxes, boxes))
        results.append(score_record(record, boxes))

    if missing:
        logger.warning("%d records have no prediction and count as misses", len(missing))
    if unparseable:
        logger.warning("%d predictions could not be parsed and count as misses", len(unparseable))

    baselines = _baseline_results(records, train_mean_boxes(gt_records))
    breakdown = {}
    for key in BREAKDOWN_KEYS:
        attribute = "class_key" if key == "class" else key
        groups: dict[str, list[RecordResult]] = defaultdict(list)
        for result in results:
            groups[getattr(result, attribute)].append(result)
        breakdown[key] = {name: summarise(group) for name, group in sorted(groups.items())}

    spaces = sorted({p.space for p in predictions}) if predictions else []
    return {
        "settings": {
            "split": split,
            "spaces": spaces,
            "resize": asdict(resize),
            "acc_thresholds": list(ACC_THRESHOLDS),
            "match_iou": MATCH_IOU,
            "single_box_rule": "first predicted box",
        },
        "model": summarise(results),
        "baselines": {name: summarise(group) for name, group in baselines.items()},
        "baseline_notes": {
            "train_mean_box_missing_class": sum(
                result.status == "no_train_box" for result in baselines["train_mean_box"]
            ),
        },
        "breakdown": breakdown,
        "curve": {
            "thresholds": list(CURVE_THRESHOLDS),
            "model": accuracy_curve(results),
            **{name: accuracy_curve(group) for name, group in baselines.items()},
        },
        "warnings": sanity_warnings(checked),
        "extra_box_records": sum(result.extra_boxes > 0 for result in results),
        "missing": missing,
        "unparseable": unparseable,
        "unmatched_predictions": unmatched,
        "records": [asdict(result) for result in results],
    }


# --- Output ---------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _summary_row(name: str, summary: dict[str, Any]) -> str:
    single = summary["single"] or {}
    multi = summary["multi"] or {}
    cells = [
        name,
        str(summary["records"]),
        *(_percent(single.get(f"acc@{t}")) for t in ACC_THRESHOLDS),
        _percent(single.get("mean_iou")),
        _percent(multi.get("precision@0.5")),
        _percent(multi.get("recall@0.5")),
        _percent(multi.get("f1@0.5")),
    ]
    return "| " + " | ".join(cells) + " |"


_TABLE_HEADER = (
    "| | records | Acc@0.3 | Acc@0.5 | Acc@0.7 | mIoU | P@0.5 | R@0.5 | F1@0.5 |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def render_markdown(report: dict[str, Any], title: str = "Grounding evaluation") -> str:
    """Render the report as Markdown tables (values in percent)."""
    settings = report["settings"]
    lines = [
        f"# {title}",
        "",
        f"Split: `{settings['split']}`; prediction space(s): "
        f"{', '.join(settings['spaces']) or 'none'}. Values are percent. Acc and mIoU cover "
        "single-box targets (first predicted box); P/R/F1 cover multi-box targets with "
        f"one-to-one matching at IoU {MATCH_IOU}.",
        "",
    ]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in report["warnings"]] + [""]

    lines += ["## Overall", "", _TABLE_HEADER, _summary_row("model", report["model"])]
    for name, summary in report["baselines"].items():
        lines.append(_summary_row(f"baseline: {name.replace('_', ' ')}", summary))
    lines.append("")
    missing_class = report["baseline_notes"]["train_mean_box_missing_class"]
    if missing_class:
        lines += [
            f"Records whose class has no train-split target: {missing_class}. The mean-box "
            "baseline counts them as misses.",
            "",
        ]

    for key, groups in report["breakdown"].items():
        lines += [f"## By {key}", "", _TABLE_HEADER]
        lines += [_summary_row(name, summary) for name, summary in groups.items()]
        lines.append("")

    lines += [
        "## Problems",
        "",
        f"- records without a prediction: {len(report['missing'])}",
        f"- unparseable predictions: {len(report['unparseable'])}",
        f"- single-box records answered with extra boxes: {report['extra_box_records']}",
        f"- predictions for records outside this split: {len(report['unmatched_predictions'])}",
        "",
    ]
    for item in report["unparseable"][:50]:
        lines.append(f"- `{item['id']}` ({item['location']}): {item['error']}")
    if len(report["unparseable"]) > 50:
        lines.append(f"- ... {len(report['unparseable']) - 50} more in metrics.json")
    return "\n".join(lines) + "\n"


def render_curve_png(report: dict[str, Any]) -> bytes:
    """Plot accuracy against the IoU threshold for the model and baselines as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    thresholds = report["curve"]["thresholds"]
    for name, style in (("model", "-o"), ("centre_box", "--"), ("train_mean_box", ":")):
        values = report["curve"].get(name) or []
        if values:
            axes.plot(thresholds, values, style, label=name.replace("_", " "))
    axes.set_xlabel("IoU threshold")
    axes.set_ylabel("accuracy (single-box targets)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    axes.set_title(f"Accuracy by IoU threshold ({report['settings']['split']} split)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write metrics.json, metrics.md, per_record.jsonl and accuracy_by_iou.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "metrics.json",
        "md": out_dir / "metrics.md",
        "records": out_dir / "per_record.jsonl",
        "png": out_dir / "accuracy_by_iou.png",
    }
    summary = {key: value for key, value in report.items() if key != "records"}
    write_json_atomic(paths["json"], summary)
    write_text_atomic(paths["md"], render_markdown(report))
    write_jsonl_atomic(paths["records"], report["records"])
    write_bytes_atomic(paths["png"], render_curve_png(report))
    return list(paths.values())


# --- CLI ------------------------------------------------------------------------------------


@click.command("eval")
@click.option(
    "--pred",
    "pred_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Prediction file, or a folder of prediction files (an export folder works).",
)
@click.option(
    "--gt",
    "gt_paths",
    required=True,
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Run folder or records.jsonl with the ground truth; repeat for several runs.",
)
@click.option(
    "--format",
    "format_name",
    type=click.Choice(PREDICTION_FORMATS),
    default="json",
    show_default=True,
    help="Layout or box markup of the predictions.",
)
@click.option(
    "--space",
    type=click.Choice(box_ops.SPACES),
    default=None,
    help="Coordinate space of the predicted numbers; overrides the format's own space. "
    "Required for --format json. pixels: x0, y0, x1, y1 in original pixels; norm1000 and "
    "norm1: the same scaled to 0..1000 or 0..1 of the width and height; resized: pixels "
    "of the image as resized for the model (Qwen2-VL style); florence-loc: Florence-2 "
    "location bins 0..999; percent: Label Studio x, y, width, height in percent; "
    "coco-xywh: x, y, width, height in pixels.",
)
@click.option(
    "--markup",
    type=click.Choice(tuple(MARKUPS)),
    default=None,
    help="Box markup of model text for --format ms-swift or llama-factory.",
)
@click.option(
    "--split",
    type=click.Choice(EVAL_SPLITS),
    default="test",
    show_default=True,
    help="Ground-truth split to score.",
)
@resize_options
@click.option(
    "--pair-by-order",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Export file whose row ids are given to id-less prediction rows by position.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for metrics.json, metrics.md, per_record.jsonl and accuracy_by_iou.png.",
)
def eval_command(
    pred_path: Path,
    gt_paths: tuple[Path, ...],
    format_name: str,
    space: str | None,
    markup: str | None,
    split: str,
    resize: ResizeSettings,
    pair_by_order: Path | None,
    out_dir: Path,
) -> None:
    """Score grounding predictions against MedGround records."""
    try:
        loaded = load_runs(gt_paths)
        predictions = read_predictions(pred_path, format_name, markup, space, pair_by_order)
        report = evaluate(loaded.records, predictions, split=split, resize=resize)
    except (RecordFileError, PredictionFileError, EvaluationError) as exc:
        raise click.ClickException(str(exc)) from exc

    written = write_outputs(report, out_dir)
    single = report["model"]["single"]
    multi = report["model"]["multi"]
    if single:
        click.echo(
            f"single-box records: {single['records']}, Acc@0.5 {_percent(single['acc@0.5'])}%, "
            f"mIoU {_percent(single['mean_iou'])}%"
        )
    if multi:
        click.echo(f"multi-box records: {multi['records']}, F1@0.5 {_percent(multi['f1@0.5'])}%")
    for message in report["warnings"]:
        click.echo(f"WARNING: {message}", err=True)
    click.echo(f"wrote {', '.join(str(path) for path in written)}")
