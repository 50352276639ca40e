"""End-to-end runs on the shared real datasets and on the demo: boxes, cues, outputs, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from PIL import Image

from reference import RefObject, load_manifest, reference_objects
from support import DATASETS, REPO, SHARED_DATASETS, invoke

ALL_RUNS = [
    *(pytest.param(name, marks=pytest.mark.shared_data) for name in SHARED_DATASETS),
    "demo-phantom",
]
SIZE_WORDS = ("tiny", "small", "medium-sized", "large")
SIDE_WORDS = ("upper", "lower", "left", "right", "centre", "middle")
SHAPE_WORDS = ("round", "oval", "elongated", "irregular")
RELATION_SIDES = {
    "leftmost": "left",
    "rightmost": "right",
    "uppermost": "upper",
    "lowermost": "lower",
}
CUE_THRESHOLDS = yaml.safe_load((REPO / "rules" / "cues.yaml").read_text(encoding="utf-8"))


def _records(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _run_folder(request: pytest.FixtureRequest, name: str) -> Path:
    """Return the run folder of ``name``, running the session's runs on first use."""
    if name == "demo-phantom":
        return request.getfixturevalue("demo_run")
    return request.getfixturevalue("dataset_runs")[name]


def _manifest_for(folder: Path, name: str) -> dict[str, Any]:
    if name == "demo-phantom":
        return load_manifest(folder.parents[1] / "data" / "demo.yaml")
    return load_manifest(DATASETS / f"{name}.yaml")


def _matching(objects: list[RefObject], target: dict[str, Any]) -> list[RefObject]:
    box = tuple(target["bbox_xyxy"])
    return [o for o in objects if o.bbox_xyxy == box and o.class_name == target["class"]]


@pytest.mark.parametrize("name", ALL_RUNS)
def test_run_accepts_records(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    assert _records(folder), f"{name}: no accepted record"


@pytest.mark.parametrize("name", ALL_RUNS)
def test_boxes_match_reference_components(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    manifest = _manifest_for(folder, name)
    cache: dict[str, list[RefObject]] = {}
    mismatches = []
    for record in _records(folder):
        image = record["source"]["image"]
        if image not in cache:
            cache[image] = reference_objects(manifest, record)
        for target in record["targets"]:
            if not _matching(cache[image], target):
                mismatches.append((record["id"], target["class"], target["bbox_xyxy"]))
    assert mismatches == [], f"boxes that are no reference component: {mismatches[:5]}"


def _band(value: float, bounds: list[float], words: tuple[str, ...], margins: list[float]) -> Any:
    if any(abs(value - b) < m for b, m in zip(bounds, margins, strict=True)):
        return None
    return next((w for b, w in zip(bounds, words, strict=False) if value < b), words[-1])


def _reference_cues(obj: RefObject, width: int, height: int) -> dict[str, Any]:
    """Size and grid-position words from the cue file's thresholds, computed here."""
    size = CUE_THRESHOLDS["size"]
    position = CUE_THRESHOLDS["position"]
    size_bounds = [size["tiny"], size["small"], size["medium"]]
    area_frac = obj.area / (width * height)
    grid = position["grid"]
    grid_margins = [position["margin"]] * len(grid)
    cx, cy = obj.centroid_xy[0] / width, obj.centroid_xy[1] / height
    side = None
    if cx < 0.5 - position["side_margin"]:
        side = "left"
    elif cx > 0.5 + position["side_margin"]:
        side = "right"
    return {
        "size": _band(
            area_frac, size_bounds, SIZE_WORDS, [size["margin"] * b for b in size_bounds]
        ),
        "vertical": _band(cy, grid, ("upper", "middle", "lower"), grid_margins),
        "horizontal": _band(cx, grid, ("left", "centre", "right"), grid_margins),
        "image_side": side,
    }


@pytest.mark.parametrize("name", ALL_RUNS)
def test_cues_match_reference_geometry(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    manifest = _manifest_for(folder, name)
    wrong = []
    for record in _records(folder):
        if record["task"] == "multi":
            continue
        target = record["targets"][0]
        matches = _matching(reference_objects(manifest, record), target)
        if not matches:
            continue  # reported by test_boxes_match_reference_components
        expected = _reference_cues(matches[0], record["image"]["width"], record["image"]["height"])
        for key, word in expected.items():
            if record["cues"].get(key) != word:
                wrong.append((record["id"], key, record["cues"].get(key), word))
    assert wrong == [], f"(id, cue, record, reference): {wrong[:5]}"


def _stated_words(query: str, vocabulary: tuple[str, ...]) -> set[str]:
    tokens = set(re.findall(r"[a-z]+(?:-[a-z]+)*", query.lower()))
    return tokens & set(vocabulary)


def _cue_problems(record: dict[str, Any]) -> list[str]:
    """List every size, side or shape word of the query that the record's cues lack."""
    cues = record["cues"]
    query = record["query"]
    problems = []
    for word in _stated_words(query, SIZE_WORDS):
        if cues.get("size") != word:
            problems.append(f"size word {word!r} but cue {cues.get('size')!r}")
    allowed_sides = set((cues.get("position") or "").split())
    allowed_sides |= {cues.get("vertical"), cues.get("horizontal"), cues.get("image_side")}
    allowed_sides.add(RELATION_SIDES.get(cues.get("relation") or ""))
    for word in _stated_words(query, SIDE_WORDS):
        if word not in allowed_sides:
            problems.append(f"side word {word!r} but cues {cues}")
    for word in _stated_words(query, SHAPE_WORDS):
        if cues.get("shape") != word:
            problems.append(f"shape word {word!r} but cue {cues.get('shape')!r}")
    return problems


@pytest.mark.parametrize(
    ("query", "cues", "expected"),
    [
        ("Find the small polyp.", {"size": "small"}, 0),
        ("Find the small polyp.", {"size": "large"}, 1),
        ("Find the smaller one of the two polyps.", {"relation": "smallest"}, 0),
        ("Mark the polyp in the upper left of the image.", {"position": "upper left"}, 0),
        ("Mark the polyp in the upper left of the image.", {"position": "upper right"}, 1),
        ("Find the left one of the two polyps.", {"relation": "leftmost"}, 0),
        ("Point out the oval cyst.", {"shape": "round"}, 1),
        ("Show the medium-sized, round cyst.", {"size": "medium-sized", "shape": "round"}, 0),
        ("Locate the light-brown area.", {}, 0),
    ],
    ids=[
        "size-stated",
        "size-contradicted",
        "comparative-is-not-size",
        "grid-position",
        "grid-contradicted",
        "relation-side",
        "shape-contradicted",
        "hyphenated-size",
        "class-name-hyphen",
    ],
)
def test_cue_checker_finds_words(query: str, cues: dict[str, Any], expected: int) -> None:
    assert len(_cue_problems({"query": query, "cues": cues})) == expected


@pytest.mark.parametrize("name", ALL_RUNS)
def test_queries_state_only_known_cues(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    problems = [(r["id"], r["query"], p) for r in _records(folder) for p in _cue_problems(r)]
    assert problems == [], f"queries stating unsupported cues: {problems[:5]}"


@pytest.mark.parametrize("name", ALL_RUNS)
def test_outputs_leave_no_temporary_files(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    leftovers = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("name", ALL_RUNS)
def test_outputs_are_complete(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    records = _records(folder)
    table = pl.read_parquet(folder / "records.parquet")
    assert table.get_column("id").to_list() == [r["id"] for r in records]
    assert pl.read_parquet(folder / "rejected.parquet").columns[:4] == [
        "key",
        "image_key",
        "stage",
        "rule_id",
    ]
    assert (folder / "report.md").read_text(encoding="utf-8").startswith("# Run report")
    with Image.open(folder / "preview" / "accepted-1.png") as sheet:
        sheet.verify()


@pytest.mark.parametrize("name", ALL_RUNS)
def test_outputs_honour_umask(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    reference = folder.parent / "umask-probe.txt"
    reference.write_text("probe", encoding="utf-8")
    expected = reference.stat().st_mode & 0o777
    for file in ("records.jsonl", "records.parquet", "rejected.parquet", "report.md"):
        assert (folder / file).stat().st_mode & 0o777 == expected, file


@pytest.mark.shared_data
def test_rerun_reuses_batches(shared_data: Path, tmp_path: Path) -> None:
    manifest = DATASETS / "busi-breast-ultrasound.yaml"
    args = ("run", manifest, "--out", tmp_path, "--root", shared_data / "busi-breast-ultrasound")
    first = invoke(*args, "--batch-size", "4")
    records = tmp_path / "busi-breast-ultrasound" / "records.jsonl"
    before = records.read_bytes()
    second = invoke(*args, "--batch-size", "4")
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "4 batch(es) reused" in second.output
    assert records.read_bytes() == before


def test_rerun_of_demo_is_identical(tmp_path: Path) -> None:
    assert invoke("demo", tmp_path / "data").exit_code == 0
    args = ("run", tmp_path / "data" / "demo.yaml", "--out", tmp_path / "out")
    invoke(*args)
    records = tmp_path / "out" / "demo-phantom" / "records.jsonl"
    before = records.read_bytes()
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "batch(es) reused" in second.output
    assert records.read_bytes() == before


def _neighbour_words(value: float, bounds: list[float], words: tuple[str, ...], margin: Any) -> set:
    """Words an observer may use for a value: both neighbours when it is near a bound."""
    margins = margin if isinstance(margin, list) else [margin] * len(bounds)
    for index, (bound, near) in enumerate(zip(bounds, margins, strict=True)):
        if abs(value - bound) < near:
            return {words[index], words[index + 1]}
    return {_band(value, bounds, words, margins)}


def _possible_cues(obj: RefObject, width: int, height: int) -> dict[str, set]:
    """Every word per cue that a reader might apply to an object, from the cue thresholds."""
    size = CUE_THRESHOLDS["size"]
    position = CUE_THRESHOLDS["position"]
    size_bounds = [size["tiny"], size["small"], size["medium"]]
    cx, cy = obj.centroid_xy[0] / width, obj.centroid_xy[1] / height
    side = _reference_cues(obj, width, height)["image_side"]
    return {
        "size": _neighbour_words(
            obj.area / (width * height),
            size_bounds,
            SIZE_WORDS,
            [size["margin"] * b for b in size_bounds],
        ),
        "vertical": _neighbour_words(
            cy, position["grid"], ("upper", "middle", "lower"), position["margin"]
        ),
        "horizontal": _neighbour_words(
            cx, position["grid"], ("left", "centre", "right"), position["margin"]
        ),
        "image_side": {side} if side else {"left", "right"},
    }


def _tells_apart(stated: dict[str, Any], other: dict[str, set], keys: tuple[str, ...]) -> bool:
    """True when a stated word on some key is not a word a reader might use for ``other``."""
    return any(stated[k] not in other[k] for k in keys)


def _ambiguity(record: dict[str, Any], objects: list[RefObject]) -> str | None:
    """Name the cues of a query when another object of its class may share all of them."""
    width, height = record["image"]["width"], record["image"]["height"]
    target = record["targets"][0]
    own = _matching(objects, target)[0]
    stated = _reference_cues(own, width, height)
    others = [
        _possible_cues(o, width, height)
        for o in objects
        if o.class_name == target["class"] and o != own
    ]
    query = record["query"].lower()
    if _stated_words(query, SHAPE_WORDS):
        return None  # shape may single the object out; this reference does not measure shape
    checks = []
    if _stated_words(query, SIZE_WORDS):
        checks.append(("size",))
    if "side of the image" in query:
        checks.append(("image_side",))
    if record["cues"].get("position") and record["cues"]["position"] in query:
        checks.append(("vertical", "horizontal"))
    for other in others:
        if checks and not any(_tells_apart(stated, other, keys) for keys in checks):
            return ", ".join("/".join(keys) for keys in checks)
    return None


@pytest.mark.parametrize("name", ALL_RUNS)
def test_single_queries_are_unambiguous(name: str, request: pytest.FixtureRequest) -> None:
    folder = _run_folder(request, name)
    manifest = _manifest_for(folder, name)
    ambiguous = []
    for record in _records(folder):
        if record["task"] != "single" or record["cues"]["class_count"] < 2:
            continue
        objects = reference_objects(manifest, record)
        if not _matching(objects, record["targets"][0]):
            continue  # reported by test_boxes_match_reference_components
        cue = _ambiguity(record, objects)
        if cue is not None:
            ambiguous.append((record["id"], record["query"], cue))
    assert ambiguous == [], f"queries whose cue another object may share: {ambiguous[:5]}"
