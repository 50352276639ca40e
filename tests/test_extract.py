"""Objects and targets on the shared datasets' hard cases: several objects, outlines, specks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image
from scipy import ndimage

from reference import filled_area_in_box, read_grey

pytestmark = pytest.mark.shared_data

KVASIR_TWO_POLYPS = "kvasir-seg/cju0roawvklrq0799vmjorwfv"
PH2_ROI_CLASSES = {
    "white_region",
    "red_region",
    "light_brown_region",
    "dark_brown_region",
    "blue_gray_region",
    "black_region",
    "streaks",
}


def _records(folder: Path, image_key: str | None = None) -> list[dict[str, Any]]:
    lines = (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    if image_key is None:
        return records
    return [r for r in records if r["id"].startswith(image_key + "/")]


def _rejections(folder: Path, image_key: str) -> pl.DataFrame:
    table = pl.read_parquet(folder / "rejected.parquet")
    return table.filter(pl.col("image_key") == image_key)


def test_kvasir_single_polyp_targets(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["kvasir-seg"], KVASIR_TWO_POLYPS)
    singles = {r["targets"][0]["object_ids"][0] for r in records if r["task"] == "single"}
    assert singles == {"polyp-1", "polyp-2"}


def test_kvasir_both_polyps_target(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["kvasir-seg"], KVASIR_TWO_POLYPS)
    multi = [r for r in records if r["task"] == "multi"]
    assert len(multi) == 1
    assert len(multi[0]["targets"]) == 2


def test_kvasir_speck_removed_with_reason(dataset_runs: dict[str, Path]) -> None:
    rejected = _rejections(dataset_runs["kvasir-seg"], KVASIR_TWO_POLYPS)
    specks = rejected.filter(pl.col("rule_id") == "objects.min_object_size")
    assert specks.height == 1
    assert specks.item(0, "stage") == "objects"
    assert "component of 1 px" in specks.item(0, "message")


def test_hc18_boxes_enclose_filled_head(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["hc18-fetal-head"])
    assert len(records) == 32
    for record in records:
        mask_path = Path(record["source"]["root"]) / record["source"]["masks"][0]
        outline = read_grey(mask_path) > 127
        filled = ndimage.binary_fill_holes(outline)
        box = record["targets"][0]["bbox_xyxy"]
        inside = filled_area_in_box(filled, box)
        assert inside > 5 * int(outline.sum()), record["id"]


def test_ph2_lesion_uses_bmp_mask(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["ph2-dermoscopy"])
    masks = {m for r in records for m in r["source"]["masks"]}
    assert [m for m in masks if not m.endswith(".bmp")] == []


def test_ph2_roi_colours_are_classes(dataset_runs: dict[str, Path]) -> None:
    classes = {t["class"] for r in _records(dataset_runs["ph2-dermoscopy"]) for t in r["targets"]}
    assert "lesion" in classes
    assert len(classes & PH2_ROI_CLASSES) >= 4


def test_ph2_unlabelled_roi_skipped(dataset_runs: dict[str, Path]) -> None:
    rejected = _rejections(dataset_runs["ph2-dermoscopy"], "ph2-dermoscopy/IMD057")
    assert "load.skipped_label" in rejected.get_column("rule_id").to_list()


def test_busi_lesion_per_file(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["busi-breast-ultrasound"], "busi-breast-ultrasound/benign_4")
    one_lesion = {r["targets"][0]["object_ids"][0] for r in records if len(r["targets"]) == 1}
    assert one_lesion == {"benign-1", "benign-2"}


def test_busi_both_lesions_target(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["busi-breast-ultrasound"], "busi-breast-ultrasound/benign_4")
    multi = [r for r in records if r["task"] == "multi"]
    assert [len(r["targets"]) for r in multi] == [2]


def test_busi_lesion_box_is_file_union(dataset_runs: dict[str, Path]) -> None:
    records = _records(dataset_runs["busi-breast-ultrasound"], "busi-breast-ultrasound/benign_4")
    multi = next(r for r in records if r["task"] == "multi")
    root = Path(multi["source"]["root"])
    boxes = []
    for mask in multi["source"]["masks"]:
        labels, _ = ndimage.label(read_grey(root / mask) > 127, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())
        kept = np.isin(labels, np.flatnonzero(sizes >= 20)[1:])
        rows, cols = np.nonzero(kept)
        boxes.append([int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1])
    assert sorted(t["bbox_xyxy"] for t in multi["targets"]) == sorted(boxes)


@pytest.mark.parametrize("case", ["normal_1", "normal_2"], ids=["normal-1", "normal-2"])
def test_busi_normal_has_no_target(dataset_runs: dict[str, Path], case: str) -> None:
    folder = dataset_runs["busi-breast-ultrasound"]
    image_key = f"busi-breast-ultrasound/{case}"
    rejected = _rejections(folder, image_key)
    assert _records(folder, image_key) == []
    assert rejected.get_column("rule_id").to_list() == ["objects.empty_mask"]
    assert "no foreground" in rejected.item(0, "message")


def test_busi_normal_mask_is_empty(shared_data: Path) -> None:
    # Guards the case above: the shared copy's normal masks are all zero.
    path = shared_data / "busi-breast-ultrasound/Dataset_BUSI_with_GT/normal/normal (1)_mask.png"
    with Image.open(path) as mask:
        assert not np.asarray(mask).any()


def test_isbi_crowded_class_gets_relations(dataset_runs: dict[str, Path]) -> None:
    # About 100 cells per slice: more than max_multi_objects, so no all-cells target,
    # but "the largest cell profile" still names one object.
    records = _records(dataset_runs["isbi2012-em-membrane"])
    tasks = {r["task"] for r in records}
    assert "relation" in tasks
    assert "multi" not in tasks
