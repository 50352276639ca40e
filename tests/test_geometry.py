"""Components, boxes and shape descriptors, checked on masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from medground.geometry import find_components, keep_components, shape_descriptors


def test_single_pixel_box_is_half_open() -> None:
    mask = np.zeros((10, 8), bool)
    mask[5, 3] = True
    components = find_components(mask, connectivity=2)
    assert components.bbox_xyxy.tolist() == [[3, 5, 4, 6]]
    assert components.centroid_xy.tolist() == [[3.5, 5.5]]
    assert components.area.tolist() == [1]


@pytest.mark.parametrize(
    ("connectivity", "expected"),
    [pytest.param(1, 2, id="4-connected-splits-diagonal"),
     pytest.param(2, 1, id="8-connected-joins-diagonal")],
)
def test_connectivity_decides_diagonal_neighbours(connectivity: int, expected: int) -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    assert len(find_components(mask, connectivity)) == expected


def test_boxes_match_numpy_extent() -> None:
    mask = np.zeros((60, 80), bool)
    mask[10:20, 5:30] = True
    mask[40:55, 60:79] = True
    components = find_components(mask, 2)
    assert sorted(components.bbox_xyxy.tolist()) == [[5, 10, 30, 20], [60, 40, 79, 55]]
    assert sorted(components.area.tolist()) == [250, 285]


def test_shape_is_height_by_width() -> None:
    mask = np.zeros((30, 50), bool)
    mask[2:5, 40:49] = True
    components = find_components(mask, 2)
    assert components.bbox_xyxy.tolist() == [[40, 2, 49, 5]]
    assert components.labels_in((40, 2, 49, 5)).shape == (3, 9)
    assert components.origin_xy == (40, 2)


def test_keep_components_drops_small_ones_without_relabelling() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True
    mask[5:8, 5:8] = True
    components = find_components(mask, 2)
    kept = keep_components(components, components.area >= 2)
    assert len(kept) == 1
    assert kept.bbox_xyxy.tolist() == [[5, 5, 8, 8]]
    (label_id,) = kept.label_ids.tolist()
    assert int((kept.labels == label_id).sum()) == 9
    foreground = kept.foreground()
    assert not foreground[0, 0]
    assert int(foreground.sum()) == 9


def test_disk_descriptors() -> None:
    mask = np.zeros((101, 101), bool)
    mask[disk((50, 50), 40)] = True
    shape = shape_descriptors(mask)
    assert shape.eccentricity < 0.1
    assert shape.solidity > 0.97
    assert shape.circularity > 0.9


def test_ellipse_eccentricity_and_orientation() -> None:
    mask = np.zeros((120, 200), bool)
    rows, cols = ellipse(60, 100, 20, 80)  # semi-axes 20 (rows) and 80 (cols)
    mask[rows, cols] = True
    shape = shape_descriptors(mask)
    assert shape.eccentricity == pytest.approx(math.sqrt(1 - (20 / 80) ** 2), abs=0.01)
    assert abs(shape.orientation_deg) < 1


def test_orientation_positive_towards_image_down() -> None:
    mask = np.eye(40, dtype=bool) | np.eye(40, k=1, dtype=bool)
    assert shape_descriptors(mask).orientation_deg == pytest.approx(45, abs=2)


def test_ring_is_not_solid() -> None:
    mask = np.zeros((101, 101), bool)
    mask[disk((50, 50), 40)] = True
    mask[disk((50, 50), 30)] = False
    assert shape_descriptors(mask).solidity < 0.6


def test_empty_mask_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        shape_descriptors(np.zeros((5, 5), bool))


@pytest.mark.parametrize(
    "case",
    ["ring", "ring-touching-border", "two-rings", "open-arc", "empty", "full", "noise"],
)
def test_fill_holes_matches_scipy(case: str) -> None:
    from scipy import ndimage

    from medground.geometry import fill_holes

    mask = np.zeros((60, 80), bool)
    if case in ("ring", "two-rings"):
        mask[disk((30, 30), 20)] = True
        mask[disk((30, 30), 17)] = False
    if case == "two-rings":
        mask[5:15, 60:75] = True
        mask[8:12, 63:72] = False
    if case == "ring-touching-border":
        mask[disk((10, 10), 15, shape=mask.shape)] = True
        mask[disk((10, 10), 12, shape=mask.shape)] = False
    if case == "open-arc":
        mask[disk((30, 40), 20)] = True
        mask[disk((30, 40), 17)] = False
        mask[28:33, 55:62] = False
    if case == "full":
        mask[:] = True
    if case == "noise":
        # Many small holes and pockets, some against the edges of the foreground's box.
        mask[10:50, 15:70] = np.random.default_rng(6).random((40, 55)) > 0.35
    assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_solidity_of_l_shape_matches_hand_hull() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, 0:2] = True
    mask[8:10, :] = True
    # Hull of the pixel corners: (0,0), (2,0), (10,8), (10,10), (0,10); shoelace area 68.
    assert shape_descriptors(mask).solidity == pytest.approx(36 / 68)


def test_many_components_match_regionprops() -> None:
    from skimage.measure import label, regionprops

    mask = np.random.default_rng(3).random((64, 96)) > 0.55
    components = find_components(mask, connectivity=1)
    labels = label(mask, connectivity=1)
    props = sorted(regionprops(labels), key=lambda p: (p.bbox[0], p.bbox[1]))
    ours = sorted(
        zip(components.bbox_xyxy.tolist(), components.area.tolist(),
            components.centroid_xy.tolist(), strict=True),
        key=lambda item: (item[0][1], item[0][0]),
    )
    assert len(ours) == len(props)
    for (box, area, centroid), prop in zip(ours, props, strict=True):
        min_row, min_col, max_row, max_col = prop.bbox
        assert box == [min_col, min_row, max_col, max_row]
        assert area == prop.area
        assert centroid == pytest.approx([prop.centroid[1] + 0.5, prop.centroid[0] + 0.5])


def test_measure_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import medground.geometry as geometry

    mask = np.random.default_rng(4).random((50, 70)) > 0.6
    histogram = find_components(mask, connectivity=1)
    monkeypatch.setattr(geometry, "_MAX_HISTOGRAM_CELLS", 0)
    index_arrays = find_components(mask, connectivity=1)
    assert np.array_equal(histogram.area, index_arrays.area)
    assert np.allclose(histogram.centroid_xy, index_arrays.centroid_xy)
    assert np.array_equal(histogram.bbox_xyxy, index_arrays.bbox_xyxy)


def test_solidity_matches_the_hull_of_every_pixel_corner() -> None:
    from scipy.spatial import ConvexHull

    from medground.geometry import _solidity

    rng = np.random.default_rng(5)
    for trial in range(60):
        mask = np.zeros((60, 70), bool)
        for _ in range(int(rng.integers(1, 4))):
            rows, cols = ellipse(
                int(rng.integers(10, 50)), int(rng.integers(10, 60)),
                int(rng.integers(2, 15)), int(rng.integers(2, 15)),
                shape=mask.shape, rotation=float(rng.random() * 3),
            )
            mask[rows, cols] = True
        if trial % 3 == 0:
            mask &= rng.random(mask.shape) > 0.1
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        ys, xs = np.nonzero(crop)
        corners = np.concatenate(
            [np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]
        )
        area = float(crop.sum())
        expected = min(1.0, area / ConvexHull(corners).volume)
        assert _solidity(crop, area) == pytest.approx(expected, abs=1e-12)
