"""Tests for mgr eval: perfect scores per format, IoU arithmetic, sanity checks, baselines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medground.evaluate import eval_command, evaluate
from medground.export.common import ExportOptions
from medground.export.formats import export_records
from medground.export.predictions import PredictionFileError, read_predictions
from run_factory import Case, make_run

EXPORT_CASES = [
    ("medground", None),
    ("qwen2-vl", None),
    ("qwen2.5-vl", None),
    ("qwen3-vl", None),
    ("internvl", None),
    ("florence-2", None),
    ("ms-swift", None),
    ("llama-factory", "qwen2-vl"),
    ("llama-factory", "qwen2.5-vl"),
    ("llama-factory", "qwen3-vl"),
    ("llama-factory", "internvl"),
    ("refcoco", None),
    ("hf", None),
]


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    return make_run(tmp_path)


def run_eval(pred: Path, gt: Path, out: Path, *args: str) -> tuple[Any, dict[str, Any] | None]:
    result = CliRunner().invoke(
        eval_command, ["--pred", str(pred), "--gt", str(gt), "--out", str(out), *args]
    )
    metrics = out / "metrics.json"
    return result, json.loads(metrics.read_text()) if metrics.exists() else None


def write_json_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def shifted_rows(records: list[dict[str, Any]], dx: float) -> list[dict[str, Any]]:
    return [
        {
            "id": record["id"],
            "boxes": [
                [box[0] + dx, box[1], box[2] + dx, box[3]]
                for box in (target["bbox_xyxy"] for target in record["targets"])
            ],
        }
        for record in records
    ]


@pytest.mark.parametrize("format_name,markup", EXPORT_CASES)
def test_ground_truth_scores_one_in_every_format(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path, format_name: str, markup: str | None
) -> None:
    run_dir, records = run
    export_dir = tmp_path / "export"
    export_records(records, format_name, ExportOptions(out_dir=export_dir, markup=markup))

    args = ["--format", format_name] + (["--markup", markup] if markup else [])
    result, metrics = run_eval(export_dir, run_dir, tmp_path / "eval", *args)

    assert result.exit_code == 0, result.output
    single, multi = metrics["model"]["single"], metrics["model"]["multi"]
    assert single["records"] == 3 and multi["records"] == 2
    assert single["acc@0.3"] == single["acc@0.5"] == single["acc@0.7"] == 1.0
    assert single["mean_iou"] > 0.98
    assert multi["f1@0.5"] == 1.0
    assert metrics["warnings"] == []
    assert metrics["unparseable"] == [] and metrics["missing"] == []
    # Predictions for the train and val records exist in the export but are not scored.
    assert len(metrics["unmatched_predictions"]) == 5


def test_shifted_boxes_score_the_iou_arithmetic(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    dx = 30.0
    pred = write_json_predictions(tmp_path / "pred.jsonl", shifted_rows(records, dx))
    result, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")
    assert result.exit_code == 0, result.output
    # One of seven shifted boxes overshoots its image; that is a miss, not a space mix-up.
    assert metrics["warnings"] == []

    # A box w wide shifted by dx along x keeps height h: IoU = (w - dx) h / ((w + dx) h).
    test = [record for record in records if record["split"] == "test"]
    single_ious = []
    hits = targets = 0
    for record in test:
        widths = [t["bbox_xyxy"][2] - t["bbox_xyxy"][0] for t in record["targets"]]
        ious = [(w - dx) / (w + dx) for w in widths]
        if len(ious) == 1:
            single_ious.append(ious[0])
        else:
            hits += sum(iou >= 0.5 for iou in ious)
            targets += len(ious)
    # Widths 80, 130 and 100 give IoU 50/110, 100/160 and 70/130.
    assert single_ious == [50 / 110, 100 / 160, 70 / 130]
    single = metrics["model"]["single"]
    assert single["mean_iou"] == pytest.approx(np.mean(single_ious), abs=1e-12)
    for threshold in (0.3, 0.5, 0.7):
        expected = np.mean([iou >= threshold for iou in single_ious])
        assert single[f"acc@{threshold}"] == pytest.approx(expected, abs=1e-12)
    multi = metrics["model"]["multi"]
    assert multi["true_positives"] == hits
    assert multi["recall@0.5"] == pytest.approx(hits / targets, abs=1e-12)
    assert multi["precision@0.5"] == pytest.approx(hits / targets, abs=1e-12)


def test_shift_on_grid_format_is_exact(tmp_path: Path) -> None:
    # On a 1000 x 500 image one grid step is 1 px wide and 0.5 px high, so whole-step
    # boxes survive the 0..1000 grid exactly.
    cases = (
        Case("wide", "ct", "c1", "a.png", "test", (("lesion", (100, 100, 300, 200)),), (1000, 500)),
    )
    run_dir, records = make_run(tmp_path, cases)
    rows = [{"id": records[0]["id"], "response": "<|box_start|>(150,200),(350,400)<|box_end|>"}]
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    result, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--format", "qwen2-vl")
    assert result.exit_code == 0, result.output
    # Shift of 50 px along x on a 200 px wide box: IoU = 150 / 250.
    assert metrics["model"]["single"]["mean_iou"] == pytest.approx(150 / 250, abs=1e-12)
    assert metrics["model"]["single"]["acc@0.5"] == 1.0
    assert metrics["model"]["single"]["acc@0.7"] == 0.0


def test_wrong_declared_space_is_flagged(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, records = run
    export_dir = tmp_path / "export"
    export_records(records, "qwen3-vl", ExportOptions(out_dir=export_dir))
    grid = read_predictions(export_dir, "qwen3-vl")
    rows = [{"id": p.id, "boxes": p.boxes.tolist()} for p in grid]
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)

    with caplog.at_level(logging.WARNING, logger="medground.evaluate"):
        result, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")

    assert result.exit_code == 0, result.output
    assert any("look like the 0..1000 grid" in w for w in metrics["warnings"])
    assert any("fall outside their image" in w for w in metrics["warnings"])
    assert "look like the 0..1000 grid" in (tmp_path / "eval" / "metrics.md").read_text()
    assert "sanity check" in caplog.text
    assert "WARNING: " in result.output


@pytest.mark.parametrize(
    "case,space,scale,message",
    [
        ("fractions declared as pixels", "pixels", "norm1", "look like fractions"),
        ("pixels declared as grid", "norm1000", "pixels_x6", "values above 1000"),
    ],
)
def test_other_space_mixups_are_flagged(
    run: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    case: str,
    space: str,
    scale: str,
    message: str,
) -> None:
    run_dir, records = run
    rows = []
    for record in records:
        width, height = record["image"]["width"], record["image"]["height"]
        boxes = np.array([t["bbox_xyxy"] for t in record["targets"]], dtype=float)
        if scale == "norm1":
            boxes = boxes / [width, height, width, height]
        else:
            boxes = boxes * 6
        rows.append({"id": record["id"], "boxes": boxes.tolist()})
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    result, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", space)
    assert result.exit_code == 0, result.output
    assert any(message in warning for warning in metrics["warnings"])


def test_correct_space_has_no_warnings(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    pred = write_json_predictions(tmp_path / "pred.jsonl", shifted_rows(records, 0.0))
    _, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")
    assert metrics["warnings"] == []


def test_empty_box_lists_are_misses(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    run_dir, records = run
    rows = [{"id": record["id"], "boxes": []} for record in records]
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    result, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")
    assert result.exit_code == 0, result.output
    assert metrics["model"]["single"]["mean_iou"] == 0.0
    assert metrics["model"]["multi"]["predicted_boxes"] == 0
    assert metrics["warnings"] == []
    assert metrics["unparseable"] == []


def test_unparseable_and_missing_count_as_misses(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    test = [record for record in records if record["split"] == "test"]
    single = [record for record in test if len(record["targets"]) == 1]
    rows = [
        {"id": single[0]["id"], "response": "I cannot see a lesion."},
        {"id": single[1]["id"], "response": "<|box_start|>(0,0),(10,10)<|box_end|>"},
    ]
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    result, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--format", "qwen2-vl")
    assert result.exit_code == 0, result.output
    assert [item["id"] for item in metrics["unparseable"]] == [single[0]["id"]]
    assert "no <|box_start|>" in metrics["unparseable"][0]["error"]
    assert set(metrics["missing"]) == {r["id"] for r in test} - {r["id"] for r in single[:2]}
    assert metrics["model"]["single"]["acc@0.3"] == 0.0
    assert metrics["model"]["multi"]["true_positives"] == 0
    markdown = (tmp_path / "eval" / "metrics.md").read_text()
    assert single[0]["id"] in markdown


def test_first_predicted_box_scores_single_targets(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    rows = []
    for record in records:
        right = [t["bbox_xyxy"] for t in record["targets"]]
        rows.append({"id": record["id"], "boxes": [[0, 0, 5, 5], *right]})
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    _, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")
    assert metrics["model"]["single"]["acc@0.3"] == 0.0
    assert metrics["extra_box_records"] == 3
    multi = metrics["model"]["multi"]
    assert multi["recall@0.5"] == 1.0
    assert multi["precision@0.5"] == pytest.approx(4 / 6)


def test_baselines_centre_and_train_mean(tmp_path: Path) -> None:
    box = (50, 40, 150, 120)
    cases = (
        Case("d", "ct", "p1", "a.png", "train", (("cyst", box),), (200, 160)),
        Case("d", "ct", "p2", "a.png", "train", (("cyst", box),), (200, 160)),
        Case("d", "ct", "p3", "a.png", "test", (("cyst", box),), (200, 160)),
        Case("d", "ct", "p4", "a.png", "test", (("nodule", (0, 0, 40, 40)),), (200, 160)),
    )
    run_dir, records = make_run(tmp_path, cases)
    pred = write_json_predictions(tmp_path / "pred.jsonl", shifted_rows(records, 0.0))
    _, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")

    centre = metrics["baselines"]["centre_box"]["single"]
    mean = metrics["baselines"]["train_mean_box"]["single"]
    # The centre box [50, 40, 150, 120] equals the cyst box and misses the nodule.
    assert centre["mean_iou"] == pytest.approx(0.5)
    # The cyst's train mean box equals its test box; the nodule has no train target.
    assert mean["acc@0.7"] == pytest.approx(0.5)
    assert metrics["baseline_notes"]["train_mean_box_missing_class"] == 1
    assert "baseline: centre box" in (tmp_path / "eval" / "metrics.md").read_text()


def test_breakdowns_cover_each_grouping(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    pred = write_json_predictions(tmp_path / "pred.jsonl", shifted_rows(records, 0.0))
    _, metrics = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")
    breakdown = metrics["breakdown"]
    assert set(breakdown["dataset"]) == {"busi", "kvasir-seg"}
    assert set(breakdown["modality"]) == {"endoscopy", "ultrasound"}
    assert set(breakdown["class"]) == {"benign", "malignant", "polyp"}
    assert set(breakdown["task"]) == {"single", "multi"}
    assert breakdown["dataset"]["busi"]["records"] == 2


def test_outputs_written(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    run_dir, records = run
    pred = write_json_predictions(tmp_path / "pred.jsonl", shifted_rows(records, 10.0))
    out = tmp_path / "eval"
    result, _ = run_eval(pred, run_dir, out, "--space", "pixels")
    assert result.exit_code == 0, result.output
    with Image.open(out / "accuracy_by_iou.png") as image:
        assert image.format == "PNG"
        assert image.size == (600, 400)
    per_record = (out / "per_record.jsonl").read_text().splitlines()
    assert len(per_record) == 5
    assert "| model | 5 |" in (out / "metrics.md").read_text()


def test_pair_by_order_reads_id_less_predictions(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    export_dir = tmp_path / "export"
    export_records(records, "llama-factory", ExportOptions(out_dir=export_dir, markup="qwen3-vl"))
    exported = json.loads((export_dir / "test.json").read_text())
    generated = [
        {"prompt": row["messages"][0]["content"], "predict": row["messages"][1]["content"]}
        for row in exported
    ]
    pred = write_json_predictions(tmp_path / "generated_predictions.jsonl", generated)
    order = write_json_predictions(tmp_path / "order.jsonl", exported)
    result, metrics = run_eval(
        pred,
        run_dir,
        tmp_path / "eval",
        "--format",
        "llama-factory",
        "--markup",
        "qwen3-vl",
        "--pair-by-order",
        str(order),
    )
    assert result.exit_code == 0, result.output
    assert metrics["model"]["single"]["acc@0.7"] == 1.0


def test_ms_swift_response_text_with_markup(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    export_dir = tmp_path / "export"
    export_records(records, "internvl", ExportOptions(out_dir=export_dir))
    rows = [
        {"id": row["id"], "response": row["conversations"][1]["value"]}
        for row in map(json.loads, (export_dir / "test.jsonl").read_text().splitlines())
    ]
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    result, metrics = run_eval(
        pred, run_dir, tmp_path / "eval", "--format", "ms-swift", "--markup", "internvl"
    )
    assert result.exit_code == 0, result.output
    assert metrics["model"]["multi"]["f1@0.5"] == 1.0


def test_resized_space_without_row_sizes_uses_processor_settings(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    export_dir = tmp_path / "export"
    export_records(records, "qwen2.5-vl", ExportOptions(out_dir=export_dir))
    rows = [
        {"id": row["id"], "response": row["conversations"][1]["value"]}
        for row in map(json.loads, (export_dir / "test.jsonl").read_text().splitlines())
    ]
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    _, good = run_eval(pred, run_dir, tmp_path / "good", "--format", "qwen2.5-vl")
    assert good["model"]["single"]["acc@0.7"] == 1.0
    # Declaring a smaller max_pixels than the export used moves every box.
    _, bad = run_eval(
        pred, run_dir, tmp_path / "bad", "--format", "qwen2.5-vl", "--max-pixels", "8000"
    )
    assert bad["model"]["single"]["mean_iou"] < 0.9


@pytest.mark.parametrize(
    "case,rows,args,message",
    [
        ("json without space", [{"id": "x", "boxes": []}], [], "It is never guessed"),
        (
            "text without markup",
            [{"id": "x", "predict": "..."}],
            ["--format", "llama-factory"],
            "pass --markup",
        ),
        ("row without id", [{"boxes": [[0, 0, 1, 1]]}], ["--space", "pixels"], "no 'id'"),
        (
            "bad boxes",
            [{"id": "x", "boxes": [[0, 1]]}],
            ["--space", "pixels"],
            "not a list of 4-number boxes",
        ),
    ],
)
def test_cli_rejects(
    run: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    case: str,
    rows: list[dict[str, Any]],
    args: list[str],
    message: str,
) -> None:
    run_dir, _ = run
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows)
    result, _ = run_eval(pred, run_dir, tmp_path / "eval", *args)
    assert result.exit_code != 0
    assert message in result.output


def test_split_without_records_is_rejected(tmp_path: Path) -> None:
    cases = (Case("d", "ct", "p1", "a.png", "train", (("cyst", (1, 1, 9, 9)),), (40, 40)),)
    _, records = make_run(tmp_path, cases)
    with pytest.raises(ValueError, match=r"no records in split 'test' \(splits present: train\)"):
        evaluate(records, [], split="test")


def test_duplicate_prediction_is_rejected(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    rows = shifted_rows(records, 0.0)
    pred = write_json_predictions(tmp_path / "pred.jsonl", rows + rows[:1])
    result, _ = run_eval(pred, run_dir, tmp_path / "eval", "--space", "pixels")
    assert result.exit_code != 0
    assert "is predicted twice" in result.output


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "a", "boxes": []}\n{"id": \n')
    with pytest.raises(PredictionFileError, match=r"pred.jsonl:2: invalid JSON"):
        read_predictions(pred, "json", space="pixels")


def test_ms_swift_response_wins_over_input_objects(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    run_dir, records = run
    export_dir = tmp_path / "export"
    export_records(records, "ms-swift", ExportOptions(out_dir=export_dir))
    rows = []
    for row in map(json.loads, (export_dir / "test.jsonl").read_text().splitlines()):
        # swift infer keeps the input row (objects = ground truth) and adds the response.
        row["response"] = "[0, 0, 5, 5]"
        rows.append(row)
    pred = write_json_predictions(tmp_path / "result.jsonl", rows)
    result, metrics = run_eval(
        pred, run_dir, tmp_path / "eval", "--format", "ms-swift", "--markup", "qwen2.5-vl"
    )
    assert result.exit_code == 0, result.output
    assert metrics["model"]["single"]["acc@0.3"] == 0.0
    assert metrics["unparseable"] == []
