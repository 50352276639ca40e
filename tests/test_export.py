"""Tests for mgr export: every format round-trips to the canonical boxes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medground import boxes as box_ops
from medground.export.cli import export_command
from medground.export.common import ExportError, ExportOptions, ResizeSettings
from medground.export.formats import FORMATS, export_records
from medground.export.markup import MarkupParseError, get_markup
from medground.export.predictions import read_predictions
from run_factory import DEFAULT_CASES, Case, make_run, write_png

# Largest allowed |parsed - canonical| per coordinate, as a fraction of the image side.
# Grid formats lose at most half a grid step; the resized format half a resized pixel.
GRID_TOLERANCE = 0.5 / 1000
FORMAT_CASES = [
    ("medground", None, "lossless pixels"),
    ("qwen2-vl", None, "0..1000 grid"),
    ("qwen2.5-vl", None, "resized pixels"),
    ("qwen3-vl", None, "0..1000 grid"),
    ("internvl", None, "0..1000 grid"),
    ("florence-2", None, "florence bins"),
    ("ms-swift", None, "lossless pixels"),
    ("llama-factory", "qwen2-vl", "0..1000 grid"),
    ("llama-factory", "qwen2.5-vl", "resized pixels"),
    ("llama-factory", "qwen3-vl", "0..1000 grid"),
    ("llama-factory", "internvl", "0..1000 grid"),
    ("refcoco", None, "lossless pixels"),
    ("hf", None, "lossless pixels"),
]


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    return make_run(tmp_path)


def export(
    records: list[dict[str, Any]], out: Path, format_name: str, markup: str | None = None
) -> None:
    export_records(records, format_name, ExportOptions(out_dir=out, markup=markup))


def tolerance_for(kind: str, width: int, height: int) -> np.ndarray:
    sides = np.array([width, height, width, height], dtype=np.float64)
    if kind == "lossless pixels":
        return np.full(4, 1e-9)
    if kind == "resized pixels":
        resized_width, resized_height = ResizeSettings().resized_size(width, height)
        return 0.5 * sides / np.array([resized_width, resized_height] * 2) + 1e-9
    return GRID_TOLERANCE * sides + 1e-9


@pytest.mark.parametrize("format_name,markup,kind", FORMAT_CASES)
def test_export_round_trip(
    run: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    format_name: str,
    markup: str | None,
    kind: str,
) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, format_name, markup)

    parsed = {p.id: p for p in read_predictions(out, format_name, markup=markup)}
    assert set(parsed) == {record["id"] for record in records}
    for record in records:
        prediction = parsed[record["id"]]
        width, height = record["image"]["width"], record["image"]["height"]
        resized = prediction.resized_size or ResizeSettings().resized_size(width, height)
        back = box_ops.space_to_xyxy(prediction.boxes, prediction.space, width, height, resized)
        canonical = np.array([target["bbox_xyxy"] for target in record["targets"]])
        assert back.shape == canonical.shape
        assert np.all(np.abs(back - canonical) <= tolerance_for(kind, width, height))


@pytest.mark.parametrize("format_name,markup,kind", FORMAT_CASES)
def test_export_readme_states_space_and_provenance(
    run: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    format_name: str,
    markup: str | None,
    kind: str,
) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, format_name, markup)
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "## Coordinate space" in readme
    assert "## Image size" in readme
    assert records[0]["provenance"]["manifest_sha256"] in readme
    assert "width 200..240 px" in readme


@pytest.mark.parametrize(
    "format_name,markup",
    [(name, None) for name in FORMATS if name not in {"hf", "llama-factory"}]
    + [("llama-factory", "qwen3-vl")],
)
def test_export_images_resolve(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path, format_name: str, markup: str | None
) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, format_name, markup)
    stored = sorted((out / "images").rglob("*.png"))
    distinct_sources = {record["image"]["path"] for record in records}
    assert len(stored) == len(distinct_sources)
    for path in stored:
        with Image.open(path) as image:
            assert image.size in {(200, 160), (240, 200)}


def test_qwen25vl_rows_carry_resized_size(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "qwen2.5-vl")
    row = json.loads((out / "test.jsonl").read_text().splitlines()[0])
    assert (row["width"], row["height"]) == (200, 160)
    assert (row["resized_width"], row["resized_height"]) == (196, 168)
    assert '"bbox_2d": [20, 32, 98, 116]' in row["conversations"][1]["value"]
    readme = (out / "README.md").read_text()
    assert "min_pixels=3136, max_pixels=12845056, factor=28" in readme


def test_cli_resize_options_reach_export(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    out = tmp_path / "export"
    result = CliRunner().invoke(
        export_command,
        [str(run_dir), "--format", "qwen2.5-vl", "--out", str(out), "--max-pixels", "8000"],
    )
    assert result.exit_code == 0, result.output
    row = json.loads((out / "test.jsonl").read_text().splitlines()[0])
    assert (row["resized_width"], row["resized_height"]) == ResizeSettings(
        max_pixels=8000
    ).resized_size(200, 160)
    assert (row["resized_width"], row["resized_height"]) != (196, 168)
    assert "min_pixels=3136, max_pixels=8000, factor=28" in (out / "README.md").read_text()


def test_qwen2vl_markup_text(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "qwen2-vl")
    row = json.loads((out / "test.jsonl").read_text().splitlines()[0])
    record = next(r for r in records if r["id"] == row["id"])
    assert row["conversations"][0]["value"] == "<image>\n" + record["query"]
    label = record["targets"][0]["class"]
    # [20, 30, 100, 110] on 200 x 160 -> x * 5, y * 6.25, rounded half up.
    assert row["conversations"][1]["value"] == (
        f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>(100,188),(500,688)<|box_end|>"
    )


def test_internvl_meta_file(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "internvl")
    meta = json.loads((out / "internvl_meta.json").read_text())
    assert set(meta) == {"medground_train", "medground_val", "medground_test"}
    assert meta["medground_test"]["length"] == 5
    assert Path(meta["medground_test"]["annotation"]).is_file()


def test_florence_suffix_tokens(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "florence-2")
    row = json.loads((out / "test.jsonl").read_text().splitlines()[0])
    assert row["prefix"].startswith("<OPEN_VOCABULARY_DETECTION>")
    # floor(20 / 0.2) = 100, floor(30 / 0.16) = 187, floor(110 / 0.16) = 687.
    assert row["suffix"] == "polyp<loc_100><loc_187><loc_500><loc_687>"


def test_ms_swift_rows(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "ms-swift")
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    multi = next(row for row in rows if len(row["objects"]["bbox"]) == 2)
    assert multi["messages"][1]["content"] == "<bbox><bbox>"
    assert "<ref-object>" in multi["messages"][0]["content"]
    assert multi["objects"]["bbox_type"] == "real"
    assert Path(multi["images"][0]).is_absolute() and Path(multi["images"][0]).is_file()


def test_llama_factory_dataset_info(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "llama-factory", "qwen2.5-vl")
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["medground_train"]["file_name"] == "train.json"
    assert info["medground_train"]["formatting"] == "sharegpt"
    assert info["medground_train"]["columns"] == {"messages": "messages", "images": "images"}
    rows = json.loads((out / "train.json").read_text())
    assert rows[0]["messages"][0]["content"].startswith("<image>")
    assert (out / rows[0]["images"][0]).is_file()
    assert "image_max_pixels: 48000" in (out / "README.md").read_text()


def test_refcoco_pickle_readable(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "refcoco")
    instances = json.loads((out / "instances.json").read_text())
    with (out / "refs(medground).p").open("rb") as handle:
        refs = pickle.load(handle)
    annotations = {ann["id"]: ann for ann in instances["annotations"]}
    images = {image["id"]: image for image in instances["images"]}
    by_id = {record["id"]: record for record in records}
    single = [record for record in records if len(record["targets"]) == 1]
    assert len(refs) == len(single)
    for ref in refs:
        record = by_id[ref["record_id"]]
        xyxy = box_ops.coco_xywh_to_xyxy(annotations[ref["ann_id"]]["bbox"])[0]
        assert xyxy.tolist() == record["targets"][0]["bbox_xyxy"]
        assert ref["sentences"][0]["sent"] == record["query"]
        assert (out / "images" / images[ref["image_id"]]["file_name"]).is_file()
    # The shared target of case04/img1 is one annotation used by two refs.
    assert len(instances["annotations"]) == sum(len(r["targets"]) for r in records) - 1


def test_hf_folder_loads_with_datasets(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    datasets = pytest.importorskip("datasets")
    _, records = run
    out = tmp_path / "export"
    export(records, out, "hf")
    loaded = datasets.load_dataset(str(out))
    assert set(loaded) == {"train", "val", "test"}
    by_id = {record["id"]: record for record in records}
    for row in loaded["test"]:
        record = by_id[row["id"]]
        assert row["image"].size == (record["image"]["width"], record["image"]["height"])
        assert row["bbox_xyxy"] == [target["bbox_xyxy"] for target in record["targets"]]
        assert row["query"] == record["query"]


def test_medground_layout_fields(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export(records, out, "medground")
    rows = json.loads((out / "busi_test.json").read_text())
    expected = {
        "image_path",
        "mask_path",
        "mask_paths",
        "gt_bboxes",
        "task",
        "source",
        "dataset_name",
        "original_findings",
    }
    assert expected <= set(rows[0])
    assert rows[0]["dataset_name"] == "busi"
    assert rows[0]["mask_path"].endswith("b02/mask_scan.png")


def test_hardlink_mode_shares_inode(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, records = run
    out = tmp_path / "export"
    export_records(records, "qwen3-vl", ExportOptions(out_dir=out, link="hardlink"))
    source = Path(records[0]["image"]["path"])
    copies = [p for p in (out / "images").rglob("*") if p.name.endswith(source.name)]
    assert any(copy.stat().st_ino == source.stat().st_ino for copy in copies)


def test_export_rejects_missing_image(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, records = run
    Path(records[0]["image"]["path"]).unlink()
    with pytest.raises(ExportError, match=r"img1.png of record .* not found"):
        export(records, tmp_path / "export", "qwen2-vl")


def test_export_rejects_image_size_mismatch(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, records = run
    write_png(Path(records[0]["image"]["path"]), 100, 80, seed=1)
    with pytest.raises(ExportError, match=r"is 100 x 80 pixels but record .* says 200 x 160"):
        export(records, tmp_path / "export", "qwen3-vl")


@pytest.mark.parametrize(
    "case,format_name,markup,message",
    [
        ("unknown format", "yolo", None, "valid formats: medground"),
        ("markup on a fixed-markup format", "qwen2-vl", "qwen3-vl", "applies to llama-factory"),
        ("llama-factory with florence markup", "llama-factory", "florence-2", "not valid for"),
    ],
)
def test_export_records_rejects(
    run: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    case: str,
    format_name: str,
    markup: str | None,
    message: str,
) -> None:
    _, records = run
    with pytest.raises(ExportError, match=message):
        export(records, tmp_path / "export", format_name, markup)


def test_export_rejects_inverted_box(
    run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, records = run
    records[0]["targets"][0]["bbox_xyxy"] = [50, 50, 40, 60]
    with pytest.raises(ExportError, match="empty or inverted box"):
        export(records, tmp_path / "export", "hf")


def test_cli_exports_several_runs(tmp_path: Path) -> None:
    run_a, _ = make_run(tmp_path / "a", DEFAULT_CASES[:5], name="run")
    run_b, _ = make_run(tmp_path / "b", DEFAULT_CASES[7:], name="run")
    out = tmp_path / "export"
    result = CliRunner().invoke(
        export_command, [str(run_a), str(run_b), "--format", "qwen3-vl", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "exported 8 records" in result.output
    readme = (out / "README.md").read_text()
    assert str(run_a.resolve()) in readme and str(run_b.resolve()) in readme


@pytest.mark.parametrize(
    "case,extra_args,prepare,message",
    [
        ("llama-factory without markup", ["--format", "llama-factory"], None, "needs --markup"),
        ("non-empty out folder", ["--format", "hf"], "fill", "is not empty"),
        ("invalid record", ["--format", "hf"], "break", "record.schema.json at 'task'"),
    ],
)
def test_cli_rejects(
    tmp_path: Path, case: str, extra_args: list[str], prepare: str | None, message: str
) -> None:
    run_dir, records = make_run(tmp_path)
    out = tmp_path / "export"
    if prepare == "fill":
        out.mkdir()
        (out / "old.txt").write_text("x")
    if prepare == "break":
        records[0]["task"] = "segmentation"
        (run_dir / "records.jsonl").write_text(
            "".join(json.dumps(record) + "\n" for record in records)
        )
    result = CliRunner().invoke(export_command, [str(run_dir), "--out", str(out), *extra_args])
    assert result.exit_code != 0
    assert message in result.output


def test_cli_rejects_duplicate_runs(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    result = CliRunner().invoke(
        export_command,
        [
            str(run_dir),
            str(run_dir / "records.jsonl"),
            "--format",
            "hf",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code != 0
    assert "appears in both" in result.output


@pytest.mark.parametrize(
    "case,markup_name,text,expected",
    [
        (
            "qwen2-vl with spaces",
            "qwen2-vl",
            "<|box_start|>( 1, 2 ),( 3,4 )<|box_end|>",
            [[1, 2, 3, 4]],
        ),
        (
            "internvl two boxes",
            "internvl",
            "<ref>x</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>",
            [[1, 2, 3, 4], [5, 6, 7, 8]],
        ),
        (
            "json in a fence",
            "qwen3-vl",
            '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```',
            [[1, 2, 3, 4]],
        ),
        (
            "truncated json",
            "qwen2.5-vl",
            '[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6',
            [[1, 2, 3, 4]],
        ),
        ("bare list from ms-swift", "qwen2.5-vl", "[10.5, 20, 30, 40]", [[10.5, 20, 30, 40]]),
        (
            "florence two quads",
            "florence-2",
            "a<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>",
            [[1, 2, 3, 4], [5, 6, 7, 8]],
        ),
    ],
)
def test_markup_parse_cases(
    case: str, markup_name: str, text: str, expected: list[list[float]]
) -> None:
    assert get_markup(markup_name).parse(text).tolist() == expected


@pytest.mark.parametrize("markup_name", ["qwen2-vl", "internvl", "qwen3-vl", "florence-2"])
def test_markup_parse_rejects_plain_text(markup_name: str) -> None:
    with pytest.raises(MarkupParseError, match="found"):
        get_markup(markup_name).parse("The lesion is in the upper left.")


def test_qwen25vl_rejects_image_below_patch_factor(tmp_path: Path) -> None:
    cases = (Case("tiny", "ct", "c1", "a.png", "test", (("dot", (2, 2, 10, 10)),), (20, 40)),)
    _, records = make_run(tmp_path, cases)
    with pytest.raises(ExportError, match="smaller than the patch factor 28"):
        export(records, tmp_path / "export", "qwen2.5-vl")


def test_export_files_follow_umask(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    import os

    _, records = run
    out = tmp_path / "export"
    previous = os.umask(0o022)
    try:
        export(records, out, "qwen2-vl")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.rglob("*") if path.is_file()}
    assert modes
    assert set(modes.values()) == {0o644}
