"""``mgr audit sample``: stratified draw, rendered images, review page, error messages."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from medground.audit.cli import audit_group
from medground.audit.models import PackManifest
from medground.audit.render import TARGET_COLORS
from medground.audit.sampling import allocate, parse_by

# The make_run fixture of conftest.py: writes a run folder and returns its path.
RunFactory = Callable[..., Path]


def run_sample(*args: str) -> Result:
    return CliRunner().invoke(audit_group, ["sample", *args], catch_exceptions=False)


def load_manifest(pack_dir: Path) -> PackManifest:
    return PackManifest.model_validate_json((pack_dir / "pack.json").read_text(encoding="utf-8"))


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("populations", "n", "expected"),
    [
        # One each, then 7 over the spare 59/29/9: quotas 4.26, 2.09, 0.65 -> 4, 2, 0,
        # and the one left goes to the largest remainder (c).
        pytest.param(
            {"a": 60, "b": 30, "c": 10}, 10, {"a": 5, "b": 3, "c": 2}, id="floor_then_share"
        ),
        # Fewer slots than strata: quotas 1.0, 0.6, 0.4 -> a 1, then b by remainder.
        pytest.param({"a": 5, "b": 3, "c": 2}, 2, {"a": 1, "b": 1, "c": 0}, id="fewer_than_strata"),
        pytest.param({"a": 2, "b": 1}, 10, {"a": 2, "b": 1}, id="n_exceeds_population"),
        pytest.param({"a": 4, "b": 4}, 4, {"a": 2, "b": 2}, id="equal_strata"),
        pytest.param({"all": 7}, 3, {"all": 3}, id="single_stratum"),
    ],
)
def test_allocate_hand_values(
    populations: dict[str, int], n: int, expected: dict[str, int]
) -> None:
    assert allocate(populations, n) == expected


def test_allocate_sums_and_caps() -> None:
    populations = {"a": 1, "b": 2, "c": 17, "d": 40, "e": 3}
    for n in range(1, 70):
        sizes = allocate(populations, n)
        assert sum(sizes.values()) == min(n, sum(populations.values()))
        assert all(sizes[key] <= populations[key] for key in populations)
        if n >= len(populations):
            assert min(sizes.values()) >= 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "dataset,organ", "unknown stratification field 'organ'; valid fields", id="unknown"
        ),
        pytest.param("task,task", "repeated", id="repeated"),
    ],
)
def test_parse_by_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_by(text)


def test_sample_writes_stratified_pack(make_run: RunFactory, tmp_path: Path) -> None:
    kvasir = make_run("kvasir-seg", n_records=12, tasks=("single", "multi"))
    isic = make_run("isic-2018", n_records=4, tasks=("single",))
    pack_dir = tmp_path / "pack"

    result = run_sample(str(kvasir), str(isic), "--n", "8", "--out", str(pack_dir))

    assert result.exit_code == 0, result.output
    assert "8 accepted and 0 rejected items in 3 strata" in result.output
    manifest = load_manifest(pack_dir)
    strata = {s.stratum: (s.population, s.sampled) for s in manifest.strata}
    # One per stratum, then 5 over spare 5/5/3: quotas 1.92, 1.92, 1.15 -> 1, 1, 1 and the
    # two left to the larger remainders, ties to the larger stratum.
    assert strata == {
        "dataset=isic-2018|task=single": (4, 2),
        "dataset=kvasir-seg|task=multi": (6, 3),
        "dataset=kvasir-seg|task=single": (6, 3),
    }
    assert [item.item_id for item in manifest.items] == [f"item-{i:04d}" for i in range(1, 9)]
    assert len({item.record_id for item in manifest.items}) == 8
    for item in manifest.items:
        assert (pack_dir / item.image.boxed).is_file()
        assert (pack_dir / item.image.clean).is_file()
    assert (pack_dir / "index.html").is_file()
    assert not list(tmp_path.glob(".pack.*")), "staging folder left behind"


def test_sample_is_reproducible_by_seed(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=30)

    run_sample(str(run_dir), "--n", "6", "--seed", "7", "--out", str(tmp_path / "a"))
    run_sample(str(run_dir), "--n", "6", "--seed", "7", "--out", str(tmp_path / "b"))
    run_sample(str(run_dir), "--n", "6", "--seed", "8", "--out", str(tmp_path / "c"))

    first, again, other = (load_manifest(tmp_path / name) for name in "abc")
    assert first.pack_id == again.pack_id
    assert [i.record_id for i in first.items] == [i.record_id for i in again.items]
    assert first.pack_id != other.pack_id
    assert {i.record_id for i in first.items} != {i.record_id for i in other.items}


def test_sample_draws_boxes_in_original_frame(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=1, tasks=("single",), size=(96, 64))
    run_sample(str(run_dir), "--n", "1", "--by", "", "--out", str(tmp_path / "pack"))
    item = load_manifest(tmp_path / "pack").items[0]
    x0, y0, x1, y1 = (int(v) for v in item.targets[0].bbox_xyxy)
    boxed = Image.open(tmp_path / "pack" / item.image.boxed).convert("RGB")
    clean = Image.open(tmp_path / "pack" / item.image.clean).convert("RGB")
    y_mid = (y0 + y1) // 2

    assert item.image.scale == 1.0
    assert boxed.size == clean.size == (96, 64)
    # The outline lies just outside the half-open box on all four sides...
    assert boxed.getpixel((x0 - 1, y_mid)) == hex_to_rgb(TARGET_COLORS[0])
    assert boxed.getpixel((x1, y_mid)) == hex_to_rgb(TARGET_COLORS[0])
    assert boxed.getpixel(((x0 + x1) // 2, y1)) == hex_to_rgb(TARGET_COLORS[0])
    # ...and leaves the object's boundary pixels as they were.
    assert boxed.getpixel((x0, y_mid)) == clean.getpixel((x0, y_mid)) == (230, 230, 230)
    assert boxed.getpixel((x1 - 1, y_mid)) == (230, 230, 230)


def test_sample_downscales_large_images(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=2, size=(2400, 1600))
    run_sample(str(run_dir), "--n", "2", "--max-side", "600", "--out", str(tmp_path / "pack"))

    for item in load_manifest(tmp_path / "pack").items:
        assert (item.image.width, item.image.height) == (2400, 1600)
        assert (item.image.rendered_width, item.image.rendered_height) == (600, 400)
        assert item.image.scale == pytest.approx(0.25)
        assert Image.open(tmp_path / "pack" / item.image.boxed).size == (600, 400)
        assert Image.open(tmp_path / "pack" / item.image.clean).size == (600, 400)


def test_sample_filters_split(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=9, all_test=False)  # records 0, 3, 6 are train

    run_sample(str(run_dir), "--n", "50", "--out", str(tmp_path / "test"))
    run_sample(str(run_dir), "--n", "50", "--split", "all", "--out", str(tmp_path / "all"))

    assert {item.split for item in load_manifest(tmp_path / "test").items} == {"test"}
    assert len(load_manifest(tmp_path / "test").items) == 6
    assert len(load_manifest(tmp_path / "all").items) == 9


def test_sample_names_splits_when_none_match(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=3, all_test=False)

    result = run_sample(str(run_dir), "--n", "2", "--split", "val", "--out", str(tmp_path / "p"))

    assert result.exit_code != 0
    assert "no accepted records with split 'val'" in result.output
    assert "test: 2, train: 1" in result.output
    assert "--split all" in result.output


def test_sample_includes_rejected_blind(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=6, n_rejected=4)

    result = run_sample(
        str(run_dir), "--n", "4", "--include-rejected", "3", "--out", str(tmp_path / "pack")
    )

    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "pack")
    kinds = Counter(item.kind for item in manifest.items)
    assert kinds == {"accepted": 4, "rejected": 3}
    rejected = [item for item in manifest.items if item.kind == "rejected"]
    assert {item.stage for item in rejected} == {"rules"}
    assert all(item.rule_id for item in rejected)
    assert "1 of 5 rejected rows have no query" in result.output
    page = (tmp_path / "pack" / "index.html").read_text(encoding="utf-8")
    assert "rejected" not in page.split('id="pack-data"')[0], "page shows the item kind"


def test_sample_skips_rejected_without_review_columns(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=4, reviewable_columns=False)

    result = run_sample(
        str(run_dir), "--n", "2", "--include-rejected", "3", "--out", str(tmp_path / "pack")
    )

    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "pack")
    assert all(item.kind == "accepted" for item in manifest.items)
    assert any("query, image_path, targets_json are missing" in note for note in manifest.notes)
    assert "note:" in result.output


def test_sample_escapes_query_in_page(make_run: RunFactory, tmp_path: Path) -> None:
    query = "polyp </script><script>alert('x')</script> & <b>bold</b>"
    run_dir = make_run(n_records=1, queries={0: query})

    run_sample(str(run_dir), "--n", "1", "--out", str(tmp_path / "pack"))

    page = (tmp_path / "pack" / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page
    assert "<b>bold" not in page
    block = re.search(r'id="pack-data">(.*?)</script>', page, re.S)
    assert block is not None
    assert json.loads(block.group(1))["items"][0]["query"] == query


def test_sample_rejects_invalid_record(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=2)
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    record["targets"][0]["bbox_xyxy"] = [1, 2, 3]
    lines[1] = json.dumps(record)
    (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = run_sample(str(run_dir), "--n", "1", "--out", str(tmp_path / "pack"))

    assert result.exit_code != 0
    assert "records.jsonl:2: record 'kvasir-seg/case001/t1/q0' is invalid" in result.output
    assert "'targets/0/bbox_xyxy'" in result.output


def test_sample_rejects_image_size_mismatch(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=1)
    record = json.loads((run_dir / "records.jsonl").read_text(encoding="utf-8"))
    record["image"]["width"] = 200
    (run_dir / "records.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")

    result = run_sample(str(run_dir), "--n", "1", "--out", str(tmp_path / "pack"))

    assert result.exit_code != 0
    assert "is 96x64 pixels but the record states 200x64" in result.output
    assert "kvasir-seg/case000/t1/q0" in result.output
    assert not (tmp_path / "pack").exists()


def test_sample_points_to_dataset_folders(make_run: RunFactory, tmp_path: Path) -> None:
    make_run("kvasir-seg", n_records=1)

    result = run_sample(str(tmp_path / "runs"), "--n", "1", "--out", str(tmp_path / "pack"))

    assert result.exit_code != 0
    assert "no records.jsonl in this folder" in result.output
    assert str(tmp_path / "runs" / "kvasir-seg") in result.output


def test_sample_refuses_existing_pack_without_force(make_run: RunFactory, tmp_path: Path) -> None:
    run_dir = make_run(n_records=3)
    pack_dir = tmp_path / "pack"
    run_sample(str(run_dir), "--n", "1", "--out", str(pack_dir))

    refused = run_sample(str(run_dir), "--n", "2", "--out", str(pack_dir))
    replaced = run_sample(str(run_dir), "--n", "2", "--out", str(pack_dir), "--force")

    assert refused.exit_code != 0
    assert "already exists" in refused.output
    assert "--force" in refused.output
    assert replaced.exit_code == 0
    assert len(load_manifest(pack_dir).items) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--n", "0"], "--n must be at least 1", id="zero_n"),
        pytest.param(["--n", "1", "--by", "organ"], "unknown stratification field", id="bad_by"),
        pytest.param(["--n", "1", "--include-rejected", "-1"], "0 or more", id="negative_rejected"),
        pytest.param(["--n", "1", "--max-side", "10"], "at least 64 pixels", id="tiny_max_side"),
    ],
)
def test_sample_rejects_bad_options(
    make_run: RunFactory, tmp_path: Path, args: list[str], message: str
) -> None:
    run_dir = make_run(n_records=2)

    result = run_sample(str(run_dir), *args, "--out", str(tmp_path / "pack"))

    assert result.exit_code != 0
    assert message in result.output


def test_sample_pack_follows_umask(make_run: RunFactory, tmp_path: Path) -> None:
    import os

    run = make_run("kvasir-seg", n_records=4, tasks=("single",))
    pack_dir = tmp_path / "pack"
    previous = os.umask(0o022)
    try:
        result = run_sample(str(run), "--n", "2", "--split", "all", "--out", str(pack_dir))
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert pack_dir.stat().st_mode & 0o777 == 0o755
    modes = {p.stat().st_mode & 0o777 for p in pack_dir.rglob("*") if p.is_file()}
    assert modes == {0o644}
