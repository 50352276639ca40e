"""Measure the rule stage (query claims + rule evaluation) on synthetic sample rows.

Run: ``PYTHONPATH=engine python bench/bench_rules.py [--rows 100000]``. Rows start from
the neutral defaults of ``verify.rules.example_frame`` and vary queries, cues and
measurements with a fixed seed; the rules are the built-in rule files.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import polars as pl

from medground.config.loader import load_lexicon
from medground.resources import resource_dir
from medground.verify.claims import ClaimPatterns, add_claims
from medground.verify.rules import builtin_rule_files, evaluate, example_frame, load_rules

QUERIES = (
    "Locate the polyp in this endoscopic image.",
    "Find the large polyp.",
    "Mark the lesion in the upper left of the image.",
    "Identify the nodule on the patient's left side.",
    "Find the larger one of the two polyps.",
    "Locate all three cell profiles in this micrograph.",
    "Point out the oval lesion without calcification.",
    "Find the left kidney.",
)
MODALITIES = ("endoscopy", "dermoscopy", "ultrasound", "mri", "ct", "microscopy")


def synthetic_rows(count: int, seed: int = 0) -> pl.DataFrame:
    """Return ``count`` sample rows with varied queries, cues and measurements."""
    rng = np.random.default_rng(seed)
    base = example_frame([{}])
    frame = pl.concat([base] * count) if count else base.clear()
    return frame.with_columns(
        sample_id=pl.format("ds/case{}/t0/q0", pl.int_range(count)),
        query=pl.Series(rng.choice(QUERIES, count)),
        modality=pl.Series(rng.choice(MODALITIES, count)),
        area_frac=pl.Series(rng.uniform(0, 0.5, count)),
        size=pl.Series(rng.choice(["tiny", "small", "large", "medium-sized"], count)),
        class_count=pl.Series(rng.integers(1, 5, count)),
        min_box_area=pl.Series(rng.integers(10, 20000, count)),
        evidence_cnr=pl.Series(rng.uniform(0, 3, count)),
        evidence_edge=pl.Series(rng.uniform(0, 0.2, count)),
        touches_border=pl.Series(rng.random(count) < 0.2),
    )


def main() -> None:
    """Time claims and rule evaluation and print seconds and rows per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="sample rows to evaluate")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    args = parser.parse_args()

    patterns = ClaimPatterns.from_lexicon(load_lexicon(resource_dir("rules") / "lexicon.yaml"))
    ruleset = load_rules(builtin_rule_files())
    rows = synthetic_rows(args.rows)
    timings = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        with_claims = add_claims(rows, patterns)
        claims_done = time.perf_counter()
        outcome = evaluate(ruleset, with_claims)
        end = time.perf_counter()
        timings.append((end - start, claims_done - start, end - claims_done))
    total, claims, rules = min(timings)
    rejected = sum(1 for fired in outcome.rejected_by if fired)

    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} cores, {memory_gib:.1f} GiB RAM; polars {pl.__version__}")
    print(f"rules: {len(ruleset.rules)} from {', '.join(p.name for p in ruleset.files)}")
    print(f"rows: {args.rows}; rejected: {rejected}; best of {args.repeat} runs")
    print(f"claims:   {claims:.3f} s")
    print(f"evaluate: {rules:.3f} s")
    print(f"total:    {total:.3f} s = {args.rows / total:,.0f} rows/s")


if __name__ == "__main__":
    main()
