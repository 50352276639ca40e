"""Wilson intervals and Cohen's kappa against hand-computed values."""

from __future__ import annotations

import math

import pytest

from medground.audit.stats import Z_95, cohen_kappa, wilson_interval

Z2 = Z_95**2


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # 0 of n: the lower bound is exactly 0, the upper z^2 / (n + z^2).
        pytest.param(0, 10, 0.0, Z2 / (10 + Z2), id="zero_of_n"),
        # n of n: the mirror image, lower n / (n + z^2), upper exactly 1.
        pytest.param(10, 10, 10 / (10 + Z2), 1.0, id="n_of_n"),
        pytest.param(1, 1, 1 / (1 + Z2), 1.0, id="one_of_one"),
        # 8 of 10 by hand: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.716740,
        # half width z / (1 + z^2/10) * sqrt(0.016 + z^2/400) = 0.226578.
        pytest.param(8, 10, 0.490162, 0.943318, id="eight_of_ten"),
        # 50 of 100: symmetric about 0.5, half width z/(1+z^2/100) * sqrt(0.0025 + z^2/40000).
        pytest.param(50, 100, 0.403832, 0.596168, id="half"),
    ],
)
def test_wilson_interval_hand_values(successes: int, n: int, low: float, high: float) -> None:
    result = wilson_interval(successes, n)
    assert result.estimate == pytest.approx(successes / n)
    assert result.low == pytest.approx(low, abs=1e-6)
    assert result.high == pytest.approx(high, abs=1e-6)


def test_wilson_interval_stays_in_unit_range() -> None:
    for n in (1, 2, 7, 1000):
        for successes in (0, n):
            result = wilson_interval(successes, n)
            assert 0.0 <= result.low <= result.estimate <= result.high <= 1.0


@pytest.mark.parametrize(
    ("successes", "n", "message"),
    [
        pytest.param(0, 0, "at least 1 trial", id="no_trials"),
        pytest.param(11, 10, "within", id="more_successes_than_trials"),
        pytest.param(-1, 10, "within", id="negative_successes"),
    ],
)
def test_wilson_interval_rejects_invalid_counts(successes: int, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilson_interval(successes, n)


@pytest.mark.parametrize(
    ("labels_a", "labels_b", "observed", "kappa"),
    [
        pytest.param(
            ["correct", "wrong_box", "wrong_text", "correct"],
            ["correct", "wrong_box", "wrong_text", "correct"],
            1.0,
            1.0,
            id="perfect_agreement",
        ),
        # Each rater chooses "y" for half the items, independently: p_o = p_e = 0.5.
        pytest.param(["y", "y", "n", "n"], ["y", "n", "y", "n"], 0.5, 0.0, id="chance_agreement"),
        # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 0.7,
        # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.2 / 0.5 = 0.4.
        pytest.param(
            ["y"] * 25 + ["n"] * 25,
            ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15,
            0.7,
            0.4,
            id="two_by_two_table",
        ),
        # Total disagreement with balanced marginals: p_o = 0, p_e = 0.5, kappa = -1.
        pytest.param(
            ["y", "n", "y", "n"], ["n", "y", "n", "y"], 0.0, -1.0, id="total_disagreement"
        ),
    ],
)
def test_cohen_kappa_hand_values(
    labels_a: list[str], labels_b: list[str], observed: float, kappa: float
) -> None:
    result = cohen_kappa(labels_a, labels_b)
    assert result.n == len(labels_a)
    assert result.observed == pytest.approx(observed)
    assert result.kappa == pytest.approx(kappa)


def test_cohen_kappa_undefined_for_one_category() -> None:
    result = cohen_kappa(["correct"] * 5, ["correct"] * 5)
    assert result.observed == 1.0
    assert math.isclose(result.expected, 1.0)
    assert result.kappa is None


@pytest.mark.parametrize(
    ("labels_a", "labels_b", "message"),
    [
        pytest.param([], [], "at least one item", id="empty"),
        pytest.param(["y"], ["y", "n"], "a label per item", id="length_mismatch"),
    ],
)
def test_cohen_kappa_rejects_invalid_input(
    labels_a: list[str], labels_b: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cohen_kappa(labels_a, labels_b)
