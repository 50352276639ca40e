"""Label Studio export and import: percent boxes, round trip of boxes and decisions."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from medground.audit.cli import audit_group
from medground.audit.labelstudio import import_export, region_to_target
from medground.audit.models import VERDICT_LABELS, PackManifest
from medground.audit.pack import load_pack
from medground.audit.runs import AuditInputError
from medground.audit.stats import wilson_interval

PREFIX = "http://127.0.0.1:8080/pack/"

# The make_run fixture of conftest.py: writes a run folder and returns its path.
RunFactory = Callable[..., Path]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(audit_group, list(args), catch_exceptions=False)


@pytest.fixture
def pack(make_run: RunFactory, tmp_path: Path) -> Path:
    run_dir = make_run(n_records=6, n_rejected=2)
    pack_dir = tmp_path / "pack"
    result = invoke(
        "sample", str(run_dir), "--n", "4", "--include-rejected", "2", "--out", str(pack_dir)
    )
    assert result.exit_code == 0, result.output
    return pack_dir


def exported_tasks(pack_dir: Path) -> list[dict[str, Any]]:
    result = invoke("export-labelstudio", str(pack_dir), "--image-url-prefix", PREFIX)
    assert result.exit_code == 0, result.output
    return json.loads((pack_dir / "labelstudio" / "tasks.json").read_text(encoding="utf-8"))


def annotate(
    task: dict[str, Any], verdict: str, completed_by: Any, comment: str = ""
) -> dict[str, Any]:
    """Build the annotation Label Studio exports after a reviewer accepted the prelabels."""
    result = copy.deepcopy(task["predictions"][0]["result"])
    result.append(
        {
            "id": "v1",
            "type": "choices",
            "from_name": "verdict",
            "to_name": "image",
            "value": {"choices": [verdict]},
        }
    )
    if comment:
        result.append(
            {
                "id": "c1",
                "type": "textarea",
                "from_name": "comment",
                "to_name": "image",
                "value": {"text": [comment]},
            }
        )
    return {
        "id": 1000 + len(task.get("annotations", [])),
        "completed_by": completed_by,
        "result": result,
        "was_cancelled": False,
        "created_at": "2025-01-02T10:00:00Z",
        "updated_at": "2025-01-02T10:05:00Z",
    }


def test_export_boxes_in_percent(pack: Path) -> None:
    manifest = load_pack(pack)
    tasks = exported_tasks(pack)

    assert len(tasks) == len(manifest.items)
    for task, item in zip(tasks, manifest.items, strict=True):
        assert task["data"]["image"] == PREFIX + item.image.clean
        assert task["data"]["item_id"] == item.item_id
        assert task["data"]["pack_id"] == manifest.pack_id
        assert "kind" not in task["data"]
        (region,) = task["predictions"][0]["result"]
        x0, y0, x1, y1 = item.targets[0].bbox_xyxy
        assert region["type"] == "rectanglelabels"
        assert (region["original_width"], region["original_height"]) == (96, 64)
        assert region["value"]["x"] == pytest.approx(100 * x0 / 96)
        assert region["value"]["y"] == pytest.approx(100 * y0 / 64)
        assert region["value"]["width"] == pytest.approx(100 * (x1 - x0) / 96)
        assert region["value"]["height"] == pytest.approx(100 * (y1 - y0) / 64)
        assert region["value"]["rectanglelabels"] == ["polyp"]


def test_export_box_hand_value(pack: Path) -> None:
    """A box [10, 8, 40, 30] on 96 x 64 pixels is x 10.4167 %, y 12.5 %, w 31.25 %, h 34.375 %."""
    manifest = load_pack(pack)
    item = next(i for i in manifest.items if list(i.targets[0].bbox_xyxy) == [10, 8, 40, 30])
    task = next(t for t in exported_tasks(pack) if t["data"]["item_id"] == item.item_id)

    value = task["predictions"][0]["result"][0]["value"]

    assert value["x"] == pytest.approx(10.416667, abs=1e-6)
    assert value["y"] == pytest.approx(12.5)
    assert value["width"] == pytest.approx(31.25)
    assert value["height"] == pytest.approx(34.375)


def test_export_writes_labeling_config(pack: Path) -> None:
    exported_tasks(pack)

    root = ET.parse(pack / "labelstudio" / "config.xml").getroot()

    assert root.tag == "View"
    assert root.find("RectangleLabels").get("name") == "box"
    assert [label.get("value") for label in root.iter("Label")] == ["polyp"]
    assert [choice.get("value") for choice in root.iter("Choice")] == list(VERDICT_LABELS.values())
    assert root.find("TextArea").get("name") == "comment"


def test_round_trip_boxes_and_decisions(pack: Path, tmp_path: Path) -> None:
    manifest = load_pack(pack)
    tasks = exported_tasks(pack)
    verdicts = ["Correct", "wrong_box", "Wrong text", "Ambiguous", "Correct", "Correct"]
    bob = {"id": 9, "email": "bob@example.org", "first_name": "Bob"}
    for position, (task, verdict) in enumerate(zip(tasks, verdicts, strict=True)):
        task["id"] = 500 + position
        task["annotations"] = [annotate(task, verdict, completed_by=7, comment="see edge")]
        task["annotations"].append(annotate(task, "Correct", completed_by=bob))
    # Bob moves the first item's box 6 pixels right; a cancelled annotation is ignored.
    moved = tasks[0]["annotations"][1]["result"][0]["value"]
    moved["x"] += 100 * 6 / 96
    tasks[1]["annotations"].append({**annotate(tasks[1], "Wrong box", 11), "was_cancelled": True})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")

    result = invoke("import-labelstudio", str(export), "--pack", str(pack))

    assert result.exit_code == 0, result.output
    assert "1 cancelled" in result.output
    assert "1 with corrected boxes" in result.output
    files = sorted((pack / "decisions").glob("*.json"))
    assert [f.name for f in files] == [
        f"decisions-{manifest.pack_id}-bob-example-org.json",
        f"decisions-{manifest.pack_id}-label-studio-user-7.json",
    ]
    bob_file, user7_file = (json.loads(f.read_text(encoding="utf-8")) for f in files)

    assert user7_file["reviewer"] == "label-studio-user-7"
    assert user7_file["source"] == "label-studio"
    assert [d["verdict"] for d in user7_file["decisions"]] == [
        "correct", "wrong_box", "wrong_text", "ambiguous", "correct", "correct",
    ]  # fmt: skip
    assert all(d["comment"] == "see edge" for d in user7_file["decisions"])
    assert all(d["corrected_targets"] is None for d in user7_file["decisions"])
    for decision, item in zip(user7_file["decisions"], manifest.items, strict=True):
        assert decision["record_id"] == item.record_id
        assert decision["kind"] == item.kind

    corrected = bob_file["decisions"][0]["corrected_targets"]
    x0, y0, x1, y1 = manifest.items[0].targets[0].bbox_xyxy
    assert corrected[0]["class"] == "polyp"
    assert corrected[0]["bbox_xyxy"] == pytest.approx([x0 + 6, y0, x1 + 6, y1])


def test_round_trip_boxes_exactly(pack: Path, tmp_path: Path) -> None:
    """Percent and back reproduces every pixel coordinate to float precision."""
    manifest = load_pack(pack)
    tasks = exported_tasks(pack)
    for task in tasks:
        task["annotations"] = [annotate(task, "Correct", completed_by=3)]
    # The import tolerates 0.5 px, so compare the converted regions directly as well.
    for task, item in zip(tasks, manifest.items, strict=True):
        region = task["annotations"][0]["result"][0]
        target = region_to_target(region, item, "test")
        assert target.bbox_xyxy == pytest.approx(item.targets[0].bbox_xyxy, abs=1e-9)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")

    (decisions,), summary = import_export(export, manifest)

    assert summary.corrected_boxes == 0
    assert len(decisions.decisions) == len(manifest.items)


def test_imported_decisions_feed_report(pack: Path, tmp_path: Path) -> None:
    manifest = load_pack(pack)
    tasks = exported_tasks(pack)
    accepted_seen = 0
    for task, item in zip(tasks, manifest.items, strict=True):
        # The first accepted item is a wrong box, every other item is correct.
        wrong = item.kind == "accepted" and accepted_seen == 0
        accepted_seen += item.kind == "accepted"
        task["annotations"] = [annotate(task, "Wrong box" if wrong else "Correct", 5)]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")
    invoke("import-labelstudio", str(export), "--pack", str(pack), "--out-dir", str(tmp_path / "d"))
    (decisions_path,) = (tmp_path / "d").glob("*.json")

    report = json.loads(invoke("report", str(decisions_path), "--json").output)

    assert report["accepted"]["overall"] == wilson_interval(3, 4).as_dict()
    assert report["rejected"]["false_rejection"] == wilson_interval(2, 2).as_dict()


def mutate_export(pack: Path, tmp_path: Path, change: str) -> Path:
    tasks = exported_tasks(pack)
    for task in tasks:
        task["annotations"] = [annotate(task, "Correct", 1)]
    if change == "other_pack":
        tasks[0]["data"]["pack_id"] = "audit-ffffffffffff"
    elif change == "unknown_verdict":
        tasks[0]["annotations"][0]["result"][-1]["value"]["choices"] = ["Looks fine"]
    elif change == "rotated":
        tasks[0]["annotations"][0]["result"][0]["value"]["rotation"] = 15
    elif change == "other_size":
        tasks[0]["annotations"][0]["result"][0]["original_width"] = 192
    elif change == "not_a_list":
        tasks = {"tasks": tasks}  # type: ignore[assignment]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param("other_pack", "belongs to pack 'audit-ffffffffffff'", id="other_pack"),
        pytest.param(
            "unknown_verdict",
            "unknown verdict 'Looks fine'; valid choices: Correct, Wrong box",
            id="unknown_verdict",
        ),
        pytest.param("rotated", "rotated box (rotation 15)", id="rotated_box"),
        pytest.param("other_size", "region drawn on a 192x64 image", id="other_image_size"),
        pytest.param("not_a_list", "expected a JSON list of tasks", id="not_a_list"),
    ],
)
def test_import_rejects_invalid_export(
    pack: Path, tmp_path: Path, change: str, message: str
) -> None:
    export = mutate_export(pack, tmp_path, change)

    with pytest.raises(AuditInputError, match=re.escape(message)):
        import_export(export, load_pack(pack))


def test_import_skips_annotation_without_verdict(pack: Path, tmp_path: Path) -> None:
    manifest: PackManifest = load_pack(pack)
    tasks = exported_tasks(pack)
    for task in tasks:
        task["annotations"] = [annotate(task, "Correct", 1)]
    tasks[0]["annotations"][0]["result"].pop()  # drop the verdict
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")

    (decisions,), summary = import_export(export, manifest)

    assert summary.without_verdict == 1
    assert len(decisions.decisions) == len(manifest.items) - 1
