"""Image evidence helpers against their reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import sobel

from medground.verify.evidence import sobel_at


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (17, 31)], ids=["one-pixel", "tiny", "odd"])
def test_sobel_at_matches_skimage(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    rows, cols = np.nonzero(np.ones(shape, bool))
    assert np.allclose(sobel_at(image, rows, cols), sobel(image)[rows, cols], atol=1e-6)


def test_sobel_at_interior_pixels_match_skimage() -> None:
    # Pixels whose neighbours are all inside the image take the path without padding.
    image = np.random.default_rng(2).random((20, 25)).astype(np.float32)
    rows, cols = np.nonzero(np.ones((18, 23), bool))
    rows, cols = rows + 1, cols + 1
    assert np.allclose(sobel_at(image, rows, cols), sobel(image)[rows, cols], atol=1e-6)


@pytest.mark.parametrize("steps", [1, 5], ids=["one-step", "ring-width"])
def test_dilate_matches_scipy(steps: int) -> None:
    from scipy import ndimage

    from medground.verify.evidence import dilate

    mask = np.random.default_rng(1).random((30, 40)) > 0.97
    mask[0, 0] = mask[-1, -1] = True
    assert np.array_equal(dilate(mask, steps), ndimage.binary_dilation(mask, iterations=steps))
