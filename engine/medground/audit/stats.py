"""Interval estimates and agreement statistics for audit reports.

Wilson score interval: E. B. Wilson (1927), "Probable inference, the law of succession,
and statistical inference", JASA 22(158). Cohen's kappa: J. Cohen (1960), "A coefficient
of agreement for nominal scales", Educational and Psychological Measurement 20(1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# Two-sided 95 % normal quantile, Phi^-1(0.975).
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Proportion:
    """A binomial proportion ``successes / n`` with its Wilson score interval."""

    successes: int
    n: int
    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | int]:
        """Return the fields as a JSON-ready dict."""
        return {
            "successes": self.successes,
            "n": self.n,
            "estimate": self.estimate,
            "ci95_low": self.low,
            "ci95_high": self.high,
        }


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Proportion:
    """Compute the Wilson score interval of a binomial proportion.

    Args:
        successes: Number of successes, ``0 <= successes <= n``.
        n: Number of trials, at least 1.
        z: Normal quantile of the two-sided confidence level (1.96 for 95 %).

    Returns:
        The point estimate ``successes / n`` and the interval bounds, within [0, 1].

    Raises:
        ValueError: If ``n`` is below 1 or ``successes`` is outside ``[0, n]``; an
            interval over no trials is undefined, so callers report "no items" instead.
    """
    if n < 1:
        raise ValueError(f"Wilson interval needs at least 1 trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n={n}], got {successes}")

    p_hat = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p_hat + z2 / (2 * n)) / denominator
    half_width = (z / denominator) * math.sqrt(p_hat * (1 - p_hat) / n + z2 / (4 * n * n))

    # At 0 of n the lower bound is exactly 0 and at n of n the upper bound exactly 1;
    # the floating-point difference would leave them a few ulps off.
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == n else min(1.0, center + half_width)
    return Proportion(successes=successes, n=n, estimate=p_hat, low=low, high=high)


@dataclass(frozen=True)
class Agreement:
    """Agreement of two raters on the same items.

    ``kappa`` is None when the expected chance agreement is 1 (both raters used one and
    the same category for every item), where Cohen's kappa is 0/0 and undefined.
    """

    n: int
    observed: float
    expected: float
    kappa: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        """Return the fields as a JSON-ready dict."""
        return {
            "n": self.n,
            "observed_agreement": self.observed,
            "expected_agreement": self.expected,
            "kappa": self.kappa,
        }


def cohen_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> Agreement:
    """Compute Cohen's kappa of two raters' labels on the same items.

    Args:
        labels_a: Rater A's label per item.
        labels_b: Rater B's label per item, in the same item order.

    Returns:
        Observed agreement p_o, chance agreement p_e from the raters' marginal label
        frequencies, and kappa = (p_o - p_e) / (1 - p_e).

    Raises:
        ValueError: If the sequences differ in length or are empty.
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(
            f"both raters need a label per item, got {len(labels_a)} and {len(labels_b)}"
        )
    n = len(labels_a)
    if n == 0:
        raise ValueError("Cohen's kappa needs at least one item rated by both raters")

    observed = sum(a == b for a, b in zip(labels_a, labels_b, strict=True)) / n
    counts_a = Counter(labels_a)
    counts_b = Counter(labels_b)
    expected = sum(counts_a[label] * counts_b[label] for label in counts_a) / (n * n)

    if math.isclose(expected, 1.0):
        return Agreement(n=n, observed=observed, expected=expected, kappa=None)
    kappa = (observed - expected) / (1.0 - expected)
    return Agreement(n=n, observed=observed, expected=expected, kappa=kappa)
