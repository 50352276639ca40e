"""Reliability report from reviewers' decisions: accuracy, error types, agreement.

Rules the numbers follow:

* An item's consensus verdict is the reviewers' verdict when all who decided it agree,
  and ``disputed`` otherwise. An item counts as correct only with a unanimous
  ``correct``; ``wrong_box``, ``wrong_text``, ``ambiguous`` and ``disputed`` are errors.
* Accuracy is computed over accepted items. The false-rejection rate is the share of
  sampled rejected items whose consensus is ``correct``, where the filters threw away a
  good sample.
* Intervals are Wilson 95 % score intervals over items, pooled across strata.
* Cohen's kappa is computed per pair of reviewers over the items both decided, on the
  four verdicts and on correct versus error.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medground.audit.models import VERDICT_LABELS, VERDICTS, Decision, DecisionsFile
from medground.audit.runs import AuditInputError
from medground.audit.stats import cohen_kappa, wilson_interval

REPORT_FORMAT = "medground-audit-report"
DISPUTED = "disputed"
OUTCOMES = (*VERDICTS, DISPUTED)
OUTCOME_LABELS = {**VERDICT_LABELS, DISPUTED: "Disputed"}


@dataclass
class ItemOutcome:
    """All reviewers' decisions on one pack item."""

    pack_id: str
    first: Decision
    verdicts: dict[str, str] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)

    @property
    def consensus(self) -> str:
        """The shared verdict, or ``disputed`` when reviewers differ."""
        distinct = set(self.verdicts.values())
        return distinct.pop() if len(distinct) == 1 else DISPUTED


def collect_outcomes(
    files: Sequence[tuple[Path, DecisionsFile]],
) -> dict[tuple[str, str], ItemOutcome]:
    """Group decisions by (pack id, item id).

    Raises:
        AuditInputError: If one reviewer has two files for the same pack, or two files
            describe the same item differently (files from different packs sharing an id).
    """
    seen: dict[tuple[str, str], Path] = {}
    outcomes: dict[tuple[str, str], ItemOutcome] = {}
    for path, decisions in files:
        reviewer_key = (decisions.pack_id, decisions.reviewer)
        if reviewer_key in seen:
            raise AuditInputError(
                f"two decisions files of reviewer {decisions.reviewer!r} for pack "
                f"{decisions.pack_id}: {seen[reviewer_key]} and {path}; pass only the newest"
            )
        seen[reviewer_key] = path

        for decision in decisions.decisions:
            key = (decisions.pack_id, decision.item_id)
            outcome = outcomes.setdefault(key, ItemOutcome(decisions.pack_id, decision))
            if outcome.first.record_id != decision.record_id or outcome.first.kind != decision.kind:
                raise AuditInputError(
                    f"{path}: item {decision.item_id} of pack {decisions.pack_id} is record "
                    f"{decision.record_id!r} ({decision.kind}) but another file says "
                    f"{outcome.first.record_id!r} ({outcome.first.kind}); the files come from "
                    "different packs"
                )
            outcome.verdicts[decisions.reviewer] = decision.verdict
            if decision.comment.strip():
                outcome.comments[decisions.reviewer] = decision.comment.strip()
    return outcomes


def _proportion(outcomes: Sequence[ItemOutcome]) -> dict[str, Any] | None:
    if not outcomes:
        return None
    correct = sum(1 for outcome in outcomes if outcome.consensus == "correct")
    return wilson_interval(correct, len(outcomes)).as_dict()


def _grouped(
    outcomes: Sequence[ItemOutcome], key: Callable[[ItemOutcome], str | None]
) -> dict[str, dict[str, Any] | None]:
    groups: dict[str, list[ItemOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(key(outcome) or "unknown", []).append(outcome)
    return {name: _proportion(groups[name]) for name in sorted(groups)}


def _outcome_counts(outcomes: Sequence[ItemOutcome]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for outcome in outcomes:
        counts[outcome.consensus] += 1
    return counts


def _agreements(files: Sequence[tuple[Path, DecisionsFile]]) -> list[dict[str, Any]]:
    by_pack: dict[str, list[DecisionsFile]] = {}
    for _path, decisions in files:
        by_pack.setdefault(decisions.pack_id, []).append(decisions)

    rows = []
    for pack_id in sorted(by_pack):
        reviewers = sorted(by_pack[pack_id], key=lambda d: d.reviewer)
        for first, second in itertools.combinations(reviewers, 2):
            verdicts_a = {d.item_id: d.verdict for d in first.decisions}
            verdicts_b = {d.item_id: d.verdict for d in second.decisions}
            shared = sorted(verdicts_a.keys() & verdicts_b.keys())
            row: dict[str, Any] = {
                "pack_id": pack_id,
                "reviewers": [first.reviewer, second.reviewer],
                "n": len(shared),
            }
            if shared:
                labels_a = [verdicts_a[item] for item in shared]
                labels_b = [verdicts_b[item] for item in shared]
                four = cohen_kappa(labels_a, labels_b)
                binary = cohen_kappa(
                    [label == "correct" for label in labels_a],
                    [label == "correct" for label in labels_b],
                )
                row.update(
                    observed_agreement=four.observed,
                    expected_agreement=four.expected,
                    kappa=four.kappa,
                    kappa_correct_vs_error=binary.kappa,
                )
            rows.append(row)
    return rows


def build_report(files: Sequence[tuple[Path, DecisionsFile]]) -> dict[str, Any]:
    """Compute the audit report from loaded decisions files.

    Args:
        files: ``(path, decisions)`` pairs, at least one.

    Returns:
        A JSON-ready dict; :func:`render_markdown` turns it into Markdown.
    """
    if not files:
        raise AuditInputError("give at least one decisions file")
    outcomes = list(collect_outcomes(files).values())
    accepted = [o for o in outcomes if o.first.kind == "accepted"]
    rejected = [o for o in outcomes if o.first.kind == "rejected"]

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": 1,
        "inputs": [
            {
                "path": str(path),
                "pack_id": d.pack_id,
                "reviewer": d.reviewer,
                "source": d.source,
                "n_items": d.n_items,
                "n_decided": len(d.decisions),
            }
            for path, d in files
        ],
        "accepted": {
            "n_items": len(accepted),
            "overall": _proportion(accepted),
            "by_dataset": _grouped(accepted, lambda o: o.first.dataset),
            "by_task": _grouped(accepted, lambda o: o.first.task),
            "outcomes": _outcome_counts(accepted),
        },
        "rejected": None,
        "reviewers": _per_reviewer(files),
        "agreement": _agreements(files),
        "disagreements": [_finding(o) for o in outcomes if o.consensus == DISPUTED],
        "findings": [
            _finding(o)
            for o in outcomes
            if (o.first.kind == "accepted") != (o.consensus == "correct")
        ],
    }
    if rejected:
        report["rejected"] = {
            "n_items": len(rejected),
            "false_rejection": _proportion(rejected),
            "by_stage": _grouped(rejected, lambda o: o.first.stage),
            "by_rule": _grouped(rejected, lambda o: o.first.rule_id),
            "outcomes": _outcome_counts(rejected),
        }
    return report


def _per_reviewer(files: Sequence[tuple[Path, DecisionsFile]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for _path, decisions in files:
        row = rows.setdefault(decisions.reviewer, {"decided": 0, "correct": 0, "accepted": 0})
        row["decided"] += len(decisions.decisions)
        for decision in decisions.decisions:
            if decision.kind == "accepted":
                row["accepted"] += 1
                row["correct"] += decision.verdict == "correct"
    return {
        name: {
            "decided": row["decided"],
            "accepted_accuracy": (
                wilson_interval(row["correct"], row["accepted"]).as_dict()
                if row["accepted"]
                else None
            ),
        }
        for name, row in sorted(rows.items())
    }


def _finding(outcome: ItemOutcome) -> dict[str, Any]:
    return {
        "pack_id": outcome.pack_id,
        "item_id": outcome.first.item_id,
        "record_id": outcome.first.record_id,
        "kind": outcome.first.kind,
        "dataset": outcome.first.dataset,
        "consensus": outcome.consensus,
        "verdicts": dict(sorted(outcome.verdicts.items())),
        "comments": dict(sorted(outcome.comments.items())),
    }


# Markdown rendering.


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _proportion_cells(proportion: dict[str, Any] | None) -> str:
    if proportion is None:
        return "0 | 0 | – | –"
    return (
        f"{proportion['successes']} | {proportion['n']} | {_percent(proportion['estimate'])} | "
        f"{_percent(proportion['ci95_low'])} – {_percent(proportion['ci95_high'])}"
    )


def _proportion_table(title: str, success_label: str, rows: dict[str, Any]) -> list[str]:
    lines = [
        f"| {title} | {success_label} | items | rate | 95% CI (Wilson) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {_cell(name)} | {_proportion_cells(value)} |" for name, value in rows.items()]
    return lines


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _outcome_table(counts: dict[str, int]) -> list[str]:
    total = sum(counts.values())
    lines = ["| verdict | items | share |", "| --- | ---: | ---: |"]
    for name, count in counts.items():
        share = _percent(count / total) if total else "–"
        lines.append(f"| {OUTCOME_LABELS[name]} | {count} | {share} |")
    return lines


def _kappa_text(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    """Render a report dict from :func:`build_report` as Markdown."""
    lines = ["# Audit report", ""]
    packs: dict[str, int] = {}
    for entry in report["inputs"]:
        packs[entry["pack_id"]] = entry["n_items"]
    lines.append(
        "Packs: "
        + ", ".join(f"{pack} ({n} items)" for pack, n in packs.items())
        + ". Reviewers: "
        + ", ".join(
            f"{e['reviewer']} ({e['n_decided']} decided, {e['source']})" for e in report["inputs"]
        )
        + "."
    )
    lines += [
        "",
        "An item counts as correct only when every reviewer who decided it chose *correct*; "
        "a disagreement counts as an error (*disputed*). Intervals are Wilson 95% score "
        "intervals over items.",
        "",
        "## Accuracy of accepted records",
        "",
    ]
    accepted = report["accepted"]
    if accepted["n_items"] == 0:
        lines.append("No accepted item was decided.")
    else:
        lines += _proportion_table("group", "correct", {"overall": accepted["overall"]})
        lines += ["", "### By dataset", ""]
        lines += _proportion_table("dataset", "correct", accepted["by_dataset"])
        lines += ["", "### By task", ""]
        lines += _proportion_table("task", "correct", accepted["by_task"])
        lines += ["", "### Verdicts", ""]
        lines += _outcome_table(accepted["outcomes"])

    lines += ["", "## Rejected candidates: estimated false-rejection rate", ""]
    rejected = report["rejected"]
    if rejected is None:
        lines.append(
            "No rejected candidate was decided; sample some with "
            "'mgr audit sample --include-rejected M' to estimate this rate."
        )
    else:
        lines.append("A rejected item judged *correct* was thrown away wrongly.")
        lines.append("")
        lines += _proportion_table(
            "group", "judged correct", {"overall": rejected["false_rejection"]}
        )
        lines += ["", "### By stage", ""]
        lines += _proportion_table("stage", "judged correct", rejected["by_stage"])
        lines += ["", "### By rule", ""]
        lines += _proportion_table("rule", "judged correct", rejected["by_rule"])

    lines += ["", "## Agreement between reviewers", ""]
    if not report["agreement"]:
        lines.append("Only one reviewer per pack, so agreement cannot be measured.")
    else:
        lines += [
            "| pack | reviewers | shared items | observed agreement | Cohen's kappa "
            "| kappa, correct vs error |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for row in report["agreement"]:
            pair = " & ".join(_cell(name) for name in row["reviewers"])
            if row["n"] == 0:
                lines.append(f"| {row['pack_id']} | {pair} | 0 | – | – | – |")
                continue
            lines.append(
                f"| {row['pack_id']} | {pair} | {row['n']} | {_percent(row['observed_agreement'])} "
                f"| {_kappa_text(row['kappa'])} | {_kappa_text(row['kappa_correct_vs_error'])} |"
            )

    if report["disagreements"]:
        lines += ["", "Items the reviewers disagree on, to settle together:", ""]
        lines += _item_table(report["disagreements"])

    lines += [
        "",
        "## Per reviewer",
        "",
        "| reviewer | decided | accuracy on accepted | 95% CI |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, row in report["reviewers"].items():
        accuracy = row["accepted_accuracy"]
        if accuracy is None:
            lines.append(f"| {_cell(name)} | {row['decided']} | – | – |")
        else:
            lines.append(
                f"| {_cell(name)} | {row['decided']} | {_percent(accuracy['estimate'])} | "
                f"{_percent(accuracy['ci95_low'])} – {_percent(accuracy['ci95_high'])} |"
            )

    lines += ["", "## Findings", ""]
    if not report["findings"]:
        lines.append("No accepted item was judged wrong and no rejected item was judged correct.")
    else:
        lines += ["Accepted items not judged correct, and rejected items judged correct.", ""]
        lines += _item_table(report["findings"])
    return "\n".join(lines) + "\n"


def _item_table(findings: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| item | record | kind | verdicts | comments |", "| --- | --- | --- | --- | --- |"]
    for finding in findings:
        verdicts = ", ".join(f"{who}: {v}" for who, v in finding["verdicts"].items())
        comments = "; ".join(f"{who}: {c}" for who, c in finding["comments"].items())
        lines.append(
            f"| {finding['item_id']} | {_cell(finding['record_id'])} | {finding['kind']} | "
            f"{_cell(verdicts)} | {_cell(comments)} |"
        )
    return lines
