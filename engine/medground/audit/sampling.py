"""Stratified random sampling of audit candidates.

Allocation: when the sample is at least as large as the number of strata, every stratum
gets one item, so small datasets or task types are never left out. The rest is shared
in proportion to stratum size by largest remainder. With fewer items than strata the
whole sample is shared in proportion and some strata get none. Either way the pooled
accuracy weights strata close to their share of the run; the one-per-stratum floor
over-represents strata much smaller than ``population / n``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from medground.audit.runs import Candidate

STRATIFY_FIELDS = ("dataset", "task", "split", "modality", "anatomy")


@dataclass(frozen=True)
class Stratum:
    """A stratum's key, population and the candidates drawn from it."""

    key: str
    population: int
    chosen: list[Candidate]


def parse_by(text: str) -> list[str]:
    """Parse a ``--by`` value such as ``"dataset,task"`` into field names.

    Raises:
        ValueError: If a field is not one of :data:`STRATIFY_FIELDS` or is repeated.
    """
    fields = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in fields if name not in STRATIFY_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown stratification field {unknown[0]!r}; valid fields: "
            f"{', '.join(STRATIFY_FIELDS)} (comma-separated, e.g. 'dataset,task')"
        )
    if len(set(fields)) != len(fields):
        raise ValueError(f"stratification field repeated in {text!r}")
    return fields


def stratum_key(candidate: Candidate, fields: Sequence[str]) -> str:
    """Return the readable stratum key of a candidate, e.g. ``dataset=kvasir|task=single``."""
    if not fields:
        return "all"
    return "|".join(f"{name}={candidate.field_value(name)}" for name in fields)


def allocate(populations: dict[str, int], n: int) -> dict[str, int]:
    """Share ``n`` sample slots among strata (see the module docstring for the rule).

    Args:
        populations: Stratum key to number of candidates, each at least 1.
        n: Requested sample size, at least 1.

    Returns:
        Stratum key to sample size; never more than the stratum's population. When ``n``
        is at least the total population every candidate is taken.
    """
    total = sum(populations.values())
    if n >= total:
        return dict(populations)

    keys = sorted(populations)
    if n >= len(keys):
        floor = dict.fromkeys(keys, 1)
        spare = {key: populations[key] - 1 for key in keys}
    else:
        floor = dict.fromkeys(keys, 0)
        spare = dict(populations)

    to_share = n - sum(floor.values())
    spare_total = sum(spare.values())
    quotas = {key: to_share * spare[key] / spare_total for key in keys} if spare_total else {}
    sizes = {key: floor[key] + math.floor(quotas.get(key, 0.0)) for key in keys}

    # Largest remainder; ties go to the larger stratum, then to the key order.
    left = n - sum(sizes.values())
    by_remainder = sorted(
        keys,
        key=lambda key: (-(quotas.get(key, 0.0) % 1.0), -populations[key], key),
    )
    for key in by_remainder[:left]:
        sizes[key] += 1
    return sizes


def draw_stratified(
    candidates: Sequence[Candidate], fields: Sequence[str], n: int, rng: random.Random
) -> list[Stratum]:
    """Draw a stratified simple random sample without replacement.

    Candidates are sorted by record id inside each stratum before drawing, so the result
    depends only on the candidates and the random generator's state, not on file order.
    """
    groups: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(stratum_key(candidate, fields), []).append(candidate)

    sizes = allocate({key: len(group) for key, group in groups.items()}, n)
    strata = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda c: (c.record_id, str(c.run_dir)))
        chosen = rng.sample(group, sizes[key])
        strata.append(Stratum(key=key, population=len(group), chosen=chosen))
    return strata
