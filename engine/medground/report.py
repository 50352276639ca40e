"""The Markdown run report: funnel per stage and rule, distributions, timings, warnings."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from medground import __version__
from medground.store import write_text_atomic

if TYPE_CHECKING:
    from medground.runner import Pipeline

_LIST_LIMIT = 50


def _sum(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key, 0)) for s in stats)


def _merge(stats: list[dict[str, Any]], key: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s.get(key, {}))
    return total


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def _distribution(title: str, counts: Counter[str]) -> list[str]:
    total = sum(counts.values()) or 1
    rows = [
        (
            k if k not in ("None", "null") else "(no word: value near a threshold or not measured)",
            n,
            f"{100 * n / total:.1f} %",
        )
        for k, n in counts.most_common()
    ]
    return [f"### {title}", "", *_table(("value", "count", "share"), rows), ""]


def render_report(
    pipeline: Pipeline,
    stats: list[dict[str, Any]],
    rejection_counts: pl.DataFrame,
    accepted: int,
    seconds: float,
    stopped: str | None = None,
) -> str:
    """Render the report of a finished run, or of one a VLM stage stopped early.

    ``rejection_counts`` has one row per stage and rule (:meth:`RunStore.rejection_counts`),
    so the report's memory does not grow with the number of rejections. ``stopped``
    is the reason the run ended before its last batch.
    """
    loaded = pipeline.loaded
    manifest = loaded.manifest
    discovery = next((s["discovery"] for s in stats if "discovery" in s), {})
    lines = [
        f"# Run report: {manifest.name}",
        "",
        f"- manifest: `{loaded.file}` (sha256 `{loaded.sha256[:16]}…`)",
        f"- dataset root: `{loaded.root}`",
        f"- modality: {manifest.modality}; anatomy: {manifest.anatomy or 'not given'}; "
        f"left/right convention: {manifest.orientation}",
        f"- synthesiser: {_synthesizer_text(pipeline)}; seed {pipeline.seed}; engine {__version__}",
        f"- rule files: {', '.join(f'`{p}`' for p in pipeline.rules.files)}",
        f"- written {datetime.now(UTC).isoformat(timespec='seconds')}, run time {seconds:.1f} s",
        f"- visual judge: {_judge_text(pipeline)}",
    ]
    vlm = pipeline.vlm
    if vlm.synth_config is None and vlm.judge_config is None:
        lines.append("- cost: 0 USD (offline template synthesiser, no VLM calls)")
    if stopped:
        lines += [
            "",
            f"**Run stopped before its last batch**: {stopped}. The files hold the batches "
            "committed before the stop.",
        ]
    lines += ["", "## Funnel", ""]

    by_stage: Counter[str] = Counter()
    removed = 0
    for row in rejection_counts.iter_rows(named=True):
        by_stage[row["stage"]] += row["count"]
        if row["rule_id"] == "objects.min_object_size":
            removed += row["count"]
    source = "volumes" if pipeline.loaded.manifest.volume is not None else "images"
    image = "slices" if source == "volumes" else "images"
    funnel = [
        (f"{source} found", discovery.get("images_found", _sum(stats, "images"))),
        (f"{source} paired with masks", discovery.get("paired", _sum(stats, "images"))),
        (f"{source} used (after --limit)", discovery.get("used", _sum(stats, "images"))),
    ]
    if source == "volumes":
        funnel.append(("slices chosen by the slice strategy", _sum(stats, "images")))
    funnel += [
        (f"{image} decoded", _sum(stats, "images_loaded")),
        (f"{image} with at least one object", _sum(stats, "images_with_objects")),
        ("objects (after removing small components)", _sum(stats, "objects")),
        ("components removed as too small", removed),
        ("targets", _sum(stats, "targets")),
        ("targets no phrasing could describe (synthesis)", by_stage.get("synthesis", 0)),
        ("query candidates", _sum(stats, "candidates")),
        ("rejected at format", by_stage.get("format", 0)),
        ("rejected by rules (one row per rule that fired)", by_stage.get("rules", 0)),
        ("rejected by the visual judge (one row per criterion failed)", by_stage.get("judge", 0)),
        ("accepted records", accepted),
    ]
    vlm_targets = _sum(stats, "vlm_targets")
    if vlm_targets:
        funnel.insert(
            8, ("targets chosen by the VLM (not among the engine's targets)", vlm_targets)
        )
    lines += _table(("step", "count"), funnel) + [""]
    lines += _judge_section(pipeline, stats)
    lines += _vlm_calls_section(pipeline)

    lines += ["## Rejections by stage and rule", ""]
    if rejection_counts.height:
        rows = [
            (r["stage"], f"`{r['rule_id']}`", r["count"], f"`{r['example']}`", _short(r["message"]))
            for r in rejection_counts.iter_rows(named=True)
        ]
        lines += _table(("stage", "rule", "count", "example id", "example message"), rows)
    else:
        lines.append("No rejections.")
    lines.append("")

    lines += _rule_table(pipeline, stats, rejection_counts)

    lines += ["## Unpaired and skipped files", ""]
    unpaired = discovery.get("unpaired_images", [])
    masks = discovery.get("unpaired_masks", [])
    unmatched = discovery.get("unmatched_images", [])
    summary = f"{len(unpaired)} image(s) without a mask, {len(masks)} mask file(s) without an image"
    if pipeline.loaded.manifest.images.pattern:
        summary += f", {len(unmatched)} image(s) not matching images.pattern"
    lines.append(summary + ".")
    lines.append("")
    for image, reason in unpaired[:_LIST_LIMIT]:
        lines.append(f"- image `{image}`: {reason}")
    for mask in masks[:_LIST_LIMIT]:
        lines.append(f"- mask `{mask}`: no image claims it")
    for image in unmatched[:_LIST_LIMIT]:
        lines.append(f"- image `{image}`: does not match images.pattern")
    if max(len(unpaired), len(masks), len(unmatched)) > _LIST_LIMIT:
        lines.append(f"- … lists cut at {_LIST_LIMIT}; `rejected.parquet` has every file")
    lines.append("")

    lines += ["## Distributions", ""]
    lines += _distribution("Objects by class", _merge(stats, "objects_by_class"))
    lines += _distribution("Objects by size cue", _merge(stats, "objects_by_size"))
    lines += _distribution("Targets by task", _merge(stats, "targets_by_task"))
    lines += _distribution("Accepted records by class", _merge(stats, "accepted_by_class"))
    lines += _distribution("Accepted records by task", _merge(stats, "accepted_by_task"))
    lines += _distribution("Accepted records by size cue", _merge(stats, "accepted_by_size"))
    lines += _distribution("Accepted records by split", _merge(stats, "accepted_by_split"))

    lines += ["## Warnings", ""]
    empty = empty_splits(pipeline, stats)
    if empty:
        lines.append(
            f"- split(s) {', '.join(empty)} received no record although their ratio is above "
            "0: the dataset has too few groups for the ratios. Evaluation and the audit "
            "default to the test split, so pass --split all or give more data."
        )
    warned = _warned_rules(stats)
    lines += warned or ["No rule warnings on accepted records."]
    lines.append("")

    timings = _merge(stats, "timings")
    images = max(_sum(stats, "images"), 1)
    lines += [
        "## Timings",
        "",
        "Seconds summed over every batch in run.sqlite, including batches that an earlier, "
        "interrupted run committed, so after a resume they can exceed this run's wall time.",
        "",
    ]
    rows = [(stage, f"{t:.3f}", f"{1000 * t / images:.2f}") for stage, t in timings.items()]
    lines += _table(("stage", "seconds", "ms per image"), rows) + [""]
    return "\n".join(lines)


def _synthesizer_text(pipeline: Pipeline) -> str:
    synthesizer = pipeline.vlm.synthesizer
    if synthesizer is None:
        return pipeline.synthesizer.name
    return (
        f"vlm, model `{synthesizer.model}`, prompt `{synthesizer.template.name}` "
        f"(sha256 `{synthesizer.prompt_sha256[:16]}…`)"
    )


def _judge_text(pipeline: Pipeline) -> str:
    judge = pipeline.vlm.judge
    if judge is None:
        return "skipped (no judge configured); every record says so in `verification.judge`"
    accept = judge.config.accept
    return (
        f"model `{judge.model}`, prompt `{judge.template.name}` "
        f"(sha256 `{judge.template.sha256[:16]}…`); a record passes with supported "
        f"{'required' if accept.supported else 'not checked'}, unique "
        f"{'required' if accept.unique else 'not checked'} and confidence >= "
        f"{accept.min_confidence:g}"
    )


def _judge_section(pipeline: Pipeline, stats: list[dict[str, Any]]) -> list[str]:
    verdicts = _merge(stats, "judge_verdicts")
    if pipeline.vlm.judge is None:
        return []
    rows = [(verdict, verdicts.get(verdict, 0)) for verdict in ("pass", "fail")]
    return [
        "## Visual judge",
        "",
        "Verdicts on the records that passed the rules; the rejections table lists the "
        "criteria that failed.",
        "",
        *_table(("verdict", "records"), rows),
        "",
    ]


def _vlm_calls_section(pipeline: Pipeline) -> list[str]:
    vlm = pipeline.vlm
    if vlm.synth_config is None and vlm.judge_config is None:
        return []
    summary = vlm.call_summary()
    lines = [
        "## VLM calls and cost",
        "",
        "HTTP calls recorded in `run.sqlite`, over every run on this output folder; "
        "replies read from the cache are not calls. The outcome is `ok`, or the rule id of "
        "a failed try (retried tries included).",
        "",
    ]
    if not summary:
        return [*lines, "No calls.", ""]
    rows = [
        (
            row["stage"],
            f"`{row['model']}`",
            row["outcome"],
            row["calls"],
            row["prompt_tokens"],
            row["completion_tokens"],
            f"{row['cost_usd']:.4f}",
        )
        for row in summary
    ]
    stages = sorted({row["stage"] for row in summary})
    for stage in [*stages, None]:
        chosen = [row for row in summary if stage is None or row["stage"] == stage]
        rows.append(
            (
                f"**{stage or 'all stages'}**",
                "",
                "all",
                sum(row["calls"] for row in chosen),
                sum(row["prompt_tokens"] for row in chosen),
                sum(row["completion_tokens"] for row in chosen),
                f"{sum(row['cost_usd'] for row in chosen):.4f}",
            )
        )
    header = ("stage", "model", "outcome", "calls", "input tokens", "output tokens", "cost USD")
    return [*lines, *_table(header, rows), ""]


def _rule_table(
    pipeline: Pipeline, stats: list[dict[str, Any]], rejection_counts: pl.DataFrame
) -> list[str]:
    """List every rule in force with its rejections and warnings and one example id each."""
    rejected_by: Counter[str] = Counter()
    rejected_example: dict[str, str] = {}
    for row in rejection_counts.filter(pl.col("stage") == "rules").iter_rows(named=True):
        rejected_by[row["rule_id"]] += row["count"]
        rejected_example.setdefault(row["rule_id"], row["example"])
    warned_by = _merge(stats, "warnings_by_rule")
    warned_example: dict[str, str] = {}
    for batch in stats:
        for rule_id, key in batch.get("warning_examples", {}).items():
            warned_example.setdefault(rule_id, key)
    rows = []
    for rule in pipeline.rules.rules:
        example = rejected_example.get(rule.id) or warned_example.get(rule.id)
        rows.append(
            (
                f"`{rule.id}`",
                rule.spec.severity,
                rejected_by.get(rule.id, 0),
                warned_by.get(rule.id, 0),
                f"`{example}`" if example else "",
                f"{rule.file.name}:{rule.line}",
            )
        )
    header = ("rule", "severity", "rejected", "warned (accepted)", "example id", "defined at")
    return [
        "## Rules",
        "",
        "Every rule in force, in evaluation order. `mgr rules explain <run dir> <id>` shows "
        "each rule's verdict on one sample.",
        "",
        *_table(header, rows),
        "",
    ]


def empty_splits(pipeline: Pipeline, stats: list[dict[str, Any]]) -> list[str]:
    """Return the splits with a ratio above 0 that received no accepted record."""
    config = pipeline.loaded.manifest.split
    counts = _merge(stats, "accepted_by_split")
    if config.held_out or not sum(counts.values()):
        return []
    ratios = config.ratios.model_dump()
    return [name for name, ratio in ratios.items() if ratio > 0 and not counts.get(name)]


def _warned_rules(stats: list[dict[str, Any]]) -> list[str]:
    counts = _merge(stats, "warnings_by_rule")
    examples: dict[str, str] = {}
    for batch in stats:
        for rule_id, key in batch.get("warning_examples", {}).items():
            examples.setdefault(rule_id, key)
    return [
        f"- `{rule}`: {n} accepted record(s), e.g. `{examples.get(rule, '?')}`"
        for rule, n in counts.most_common()
    ]


def _short(text: str | None, limit: int = 140) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(
    out: Path,
    pipeline: Pipeline,
    stats: list[dict[str, Any]],
    rejection_counts: pl.DataFrame,
    accepted: int,
    seconds: float,
    stopped: str | None = None,
) -> Path:
    """Write ``report.md`` atomically and return its path."""
    path = out / "report.md"
    write_text_atomic(
        path, render_report(pipeline, stats, rejection_counts, accepted, seconds, stopped)
    )
    json_path = out / "stats.json"
    write_text_atomic(json_path, json.dumps(stats, indent=1))
    return path
