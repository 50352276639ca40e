"""``mgr audit report``: accuracy, false rejections and agreement from decisions files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from medground.audit.cli import audit_group
from medground.audit.stats import wilson_interval

PACK_ID = "audit-0123456789ab"

# item, kind, dataset, task, rule id, alice's verdict, bob's verdict
ITEMS = [
    ("item-0001", "accepted", "kvasir-seg", "single", None, "correct", "correct"),
    ("item-0002", "accepted", "kvasir-seg", "single", None, "correct", "wrong_box"),
    ("item-0003", "accepted", "kvasir-seg", "multi", None, "correct", "correct"),
    ("item-0004", "accepted", "kvasir-seg", "multi", None, "wrong_box", "wrong_box"),
    ("item-0005", "accepted", "kvasir-seg", "single", None, "correct", "correct"),
    ("item-0006", "accepted", "isic-2018", "single", None, "correct", "correct"),
    ("item-0007", "accepted", "isic-2018", "multi", None, "wrong_text", "wrong_text"),
    ("item-0008", "accepted", "isic-2018", "single", None, "ambiguous", "ambiguous"),
    ("item-0009", "rejected", "kvasir-seg", "single", "size.too_small", "correct", "correct"),
    (
        "item-0010",
        "rejected",
        "isic-2018",
        "single",
        "laterality.unknown",
        "wrong_box",
        "wrong_text",
    ),
]


def decisions_file(reviewer: str, column: int, pack_id: str = PACK_ID) -> dict[str, Any]:
    return {
        "format": "medground-audit-decisions",
        "version": 1,
        "pack_id": pack_id,
        "reviewer": reviewer,
        "source": "review-page",
        "exported_at": "2025-01-01T00:00:00Z",
        "n_items": len(ITEMS),
        "decisions": [
            {
                "item_id": row[0],
                "record_id": f"{row[2]}/case{index}/t1/q0",
                "kind": row[1],
                "dataset": row[2],
                "task": row[3],
                "stage": "rules" if row[1] == "rejected" else None,
                "rule_id": row[4],
                "verdict": row[column],
                "comment": "box misses the lower edge" if row[0] == "item-0004" else "",
                "decided_at": "2025-01-01T00:00:00Z",
            }
            for index, row in enumerate(ITEMS)
        ],
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def run_report(*args: str) -> Result:
    return CliRunner().invoke(audit_group, ["report", *args], catch_exceptions=False)


@pytest.fixture
def two_reviewers(tmp_path: Path) -> list[Path]:
    return [
        write_json(tmp_path / "alice.json", decisions_file("alice", 5)),
        write_json(tmp_path / "bob.json", decisions_file("bob", 6)),
    ]


def test_report_two_reviewers_numbers(two_reviewers: list[Path]) -> None:
    result = run_report(*map(str, two_reviewers), "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    accepted = report["accepted"]
    # Consensus: 1, 3, 5, 6 correct; 2 disputed; 4, 7, 8 errors.
    assert accepted["overall"] == wilson_interval(4, 8).as_dict()
    assert accepted["by_dataset"]["kvasir-seg"] == wilson_interval(3, 5).as_dict()
    assert accepted["by_dataset"]["isic-2018"] == wilson_interval(1, 3).as_dict()
    assert accepted["by_task"]["single"] == wilson_interval(3, 5).as_dict()
    assert accepted["by_task"]["multi"] == wilson_interval(1, 3).as_dict()
    assert accepted["outcomes"] == {
        "correct": 4,
        "wrong_box": 1,
        "wrong_text": 1,
        "ambiguous": 1,
        "disputed": 1,
    }


def test_report_false_rejection_rate(two_reviewers: list[Path]) -> None:
    report = json.loads(run_report(*map(str, two_reviewers), "--json").output)

    rejected = report["rejected"]
    assert rejected["false_rejection"] == wilson_interval(1, 2).as_dict()
    assert rejected["by_rule"]["size.too_small"] == wilson_interval(1, 1).as_dict()
    assert rejected["by_rule"]["laterality.unknown"] == wilson_interval(0, 1).as_dict()
    assert rejected["by_stage"]["rules"] == wilson_interval(1, 2).as_dict()


def test_report_kappa_of_two_reviewers(two_reviewers: list[Path]) -> None:
    report = json.loads(run_report(*map(str, two_reviewers), "--json").output)

    (agreement,) = report["agreement"]
    assert agreement["reviewers"] == ["alice", "bob"]
    assert agreement["n"] == 10
    # 8 of 10 agree. Marginals: alice c6 wb2 wt1 amb1, bob c5 wb2 wt2 amb1, so
    # p_e = (30 + 4 + 2 + 1) / 100 = 0.37 and kappa = 0.43 / 0.63.
    assert agreement["observed_agreement"] == pytest.approx(0.8)
    assert agreement["expected_agreement"] == pytest.approx(0.37)
    assert agreement["kappa"] == pytest.approx(0.43 / 0.63)
    # Correct vs error: 9 of 10 agree, p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5.
    assert agreement["kappa_correct_vs_error"] == pytest.approx(0.8)


def test_report_per_reviewer_and_findings(two_reviewers: list[Path]) -> None:
    report = json.loads(run_report(*map(str, two_reviewers), "--json").output)

    assert report["reviewers"]["alice"]["accepted_accuracy"] == wilson_interval(5, 8).as_dict()
    assert report["reviewers"]["bob"]["accepted_accuracy"] == wilson_interval(4, 8).as_dict()
    assert [f["item_id"] for f in report["findings"]] == [
        "item-0002",
        "item-0004",
        "item-0007",
        "item-0008",
        "item-0009",
    ]
    assert [d["item_id"] for d in report["disagreements"]] == ["item-0002", "item-0010"]
    finding = next(f for f in report["findings"] if f["item_id"] == "item-0004")
    assert finding["comments"] == {
        "alice": "box misses the lower edge",
        "bob": "box misses the lower edge",
    }


def test_report_single_reviewer_has_no_kappa(tmp_path: Path) -> None:
    path = write_json(tmp_path / "alice.json", decisions_file("alice", 5))

    report = json.loads(run_report(str(path), "--json").output)
    markdown = run_report(str(path)).output

    assert report["agreement"] == []
    # Alice alone: 1, 2, 3, 5, 6 correct of 8.
    assert report["accepted"]["overall"] == wilson_interval(5, 8).as_dict()
    assert "Only one reviewer per pack" in markdown


def test_report_markdown_tables(two_reviewers: list[Path]) -> None:
    markdown = run_report(*map(str, two_reviewers)).output
    overall = wilson_interval(4, 8)

    assert markdown.startswith("# Audit report")
    assert (
        f"| overall | 4 | 8 | 50.0% | {100 * overall.low:.1f}% – {100 * overall.high:.1f}% |"
        in markdown
    )
    assert "| kvasir-seg | 3 | 5 | 60.0% |" in markdown
    assert "| Disputed | 1 | 12.5% |" in markdown
    assert f"| {PACK_ID} | alice & bob | 10 | 80.0% | 0.683 | 0.800 |" in markdown
    assert "| item-0009 |" in markdown


def test_report_writes_markdown_and_json(two_reviewers: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "audit.md"

    result = run_report(*map(str, two_reviewers), "--out", str(out))

    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("# Audit report")
    report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert report["accepted"]["n_items"] == 8


def test_report_rejects_json_out_name(two_reviewers: list[Path], tmp_path: Path) -> None:
    result = run_report(*map(str, two_reviewers), "--out", str(tmp_path / "audit.json"))

    assert result.exit_code != 0
    assert "give the Markdown file name" in result.output


def test_report_rejects_same_reviewer_twice(tmp_path: Path) -> None:
    first = write_json(tmp_path / "a1.json", decisions_file("alice", 5))
    second = write_json(tmp_path / "a2.json", decisions_file("alice", 6))

    result = run_report(str(first), str(second))

    assert result.exit_code != 0
    assert "two decisions files of reviewer 'alice'" in result.output
    assert "pass only the newest" in result.output


def test_report_rejects_mismatched_items(tmp_path: Path) -> None:
    alice = decisions_file("alice", 5)
    bob = decisions_file("bob", 6)
    bob["decisions"][0]["record_id"] = "other/case/t1/q0"
    paths = [write_json(tmp_path / "a.json", alice), write_json(tmp_path / "b.json", bob)]

    result = run_report(*map(str, paths))

    assert result.exit_code != 0
    assert "the files come from different packs" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            [{"data": {}, "annotations": []}], "looks like a Label Studio export", id="ls"
        ),
        pytest.param({"format": "something"}, "not a decisions file", id="wrong_format"),
        pytest.param(
            {**decisions_file("alice", 5), "reviewer": ""}, "at 'reviewer'", id="empty_reviewer"
        ),
    ],
)
def test_report_rejects_invalid_files(tmp_path: Path, content: Any, message: str) -> None:
    path = write_json(tmp_path / "decisions.json", content)

    result = run_report(str(path))

    assert result.exit_code != 0
    assert message in result.output


def test_report_rejects_unknown_verdict(tmp_path: Path) -> None:
    data = decisions_file("alice", 5)
    data["decisions"][0]["verdict"] = "fine"
    path = write_json(tmp_path / "decisions.json", data)

    result = run_report(str(path))

    assert result.exit_code != 0
    assert "decisions/0/verdict" in result.output
    assert "'fine'" in result.output
