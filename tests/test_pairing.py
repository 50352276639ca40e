"""Pairing images with masks: spaces and brackets in names, nested folders, unpaired files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support import invoke, square_labels, write_image

MANIFEST = """\
name: nested
modality: other
root: data
images:
  glob: "cases/**/*.png"
  exclude: ["cases/**/*_mask*.png"]
  case_id: "{stem}"
masks:
  - encoding: label_map
    path: "{dir}/{stem}_mask*.png"
    labels: {1: lesion}
classes:
  - name: lesion
"""

# (case, image path relative to the data folder)
NAME_CASES = [
    ("spaces", "cases/ward a/scan one.png"),
    ("parentheses", "cases/benign/benign (4).png"),
    ("brackets", "cases/set [2]/scan[1].png"),
    ("deep-nesting", "cases/a/b/c/d/deep.png"),
    ("unicode", "cases/süd/bild.png"),
]


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """Write every named case, an image without a mask and a mask without an image."""
    data = tmp_path / "data"
    for _, relative in NAME_CASES:
        image = data / relative
        write_image(image, np.full((80, 96), 90, np.uint8))
        write_image(image.with_name(image.stem + "_mask.png"), square_labels())
    write_image(data / "cases" / "orphans" / "lonely.png", np.full((80, 96), 90, np.uint8))
    write_image(data / "cases" / "orphans" / "lost_mask.png", square_labels())
    manifest = tmp_path / "nested.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    result = invoke("run", manifest, "--out", tmp_path / "out", "--no-preview")
    if result.exit_code != 0:
        pytest.fail(f"mgr run exited with {result.exit_code}:\n{result.output}")
    return tmp_path / "out" / "nested"


@pytest.mark.parametrize("relative", [row[1] for row in NAME_CASES], ids=[r[0] for r in NAME_CASES])
def test_odd_name_is_paired(nested: Path, relative: str) -> None:
    records = [json.loads(line) for line in (nested / "records.jsonl").read_text().splitlines()]
    record = next((r for r in records if r["source"]["image"] == relative), None)
    assert record is not None, f"no record for {relative}"
    assert record["targets"][0]["bbox_xyxy"] == [16, 24, 48, 56]


def test_unpaired_image_in_report(nested: Path) -> None:
    report = (nested / "report.md").read_text(encoding="utf-8")
    assert "- image `cases/orphans/lonely.png`" in report


def test_unpaired_mask_in_report(nested: Path) -> None:
    report = (nested / "report.md").read_text(encoding="utf-8")
    assert "- mask `cases/orphans/lost_mask.png`" in report
