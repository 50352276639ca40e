"""Tests for medground.boxes: conversions, round trips, IoU and matching."""

from __future__ import annotations

import numpy as np
import pytest

from medground import boxes as box_ops

IMAGE_SIZES = [(200, 160), (28, 28), (999, 1001), (1000, 1000), (4096, 3072), (513, 77)]


def random_boxes(width: int, height: int, count: int = 200, seed: int = 0) -> np.ndarray:
    """Random half-open pixel boxes inside a width x height image, some touching edges."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, width, size=(count, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, size=(count, 2)), axis=1)
    boxes = np.column_stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]])
    boxes[:10] = np.round(boxes[:10])
    boxes[10] = [0, 0, width, height]
    return boxes


@pytest.mark.parametrize("width,height", IMAGE_SIZES)
def test_norm1000_round_trip_within_half_grid_step(width: int, height: int) -> None:
    boxes = random_boxes(width, height)
    grid = box_ops.xyxy_to_norm1000(boxes, width, height)
    back = box_ops.norm1000_to_xyxy(grid, width, height)
    assert grid.dtype == np.int64
    assert grid.min() >= 0 and grid.max() <= 1000
    tolerance = 0.5 * np.array([width, height, width, height]) / 1000 + 1e-9
    assert np.all(np.abs(back - boxes) <= tolerance)


@pytest.mark.parametrize("width,height", IMAGE_SIZES)
def test_florence_round_trip_within_half_bin(width: int, height: int) -> None:
    boxes = random_boxes(width, height, seed=1)
    bins = box_ops.xyxy_to_florence_loc(boxes, width, height)
    back = box_ops.florence_loc_to_xyxy(bins, width, height)
    assert bins.min() >= 0 and bins.max() <= 999
    tolerance = 0.5 * np.array([width, height, width, height]) / 1000 + 1e-9
    assert np.all(np.abs(back - boxes) <= tolerance)


@pytest.mark.parametrize("width,height", [(200, 160), (1000, 1000), (4096, 3072), (513, 77)])
def test_resized_round_trip_within_half_resized_pixel(width: int, height: int) -> None:
    resized_height, resized_width = box_ops.smart_resize(
        height, width, 28, box_ops.QWEN25VL_MIN_PIXELS, box_ops.QWEN25VL_MAX_PIXELS
    )
    boxes = random_boxes(width, height, seed=2)
    resized = box_ops.xyxy_to_resized(boxes, width, height, resized_width, resized_height)
    back = box_ops.resized_to_xyxy(resized, width, height, resized_width, resized_height)
    scale = np.array([width / resized_width, height / resized_height] * 2)
    assert resized.dtype == np.int64
    assert np.all(np.abs(back - boxes) <= 0.5 * scale + 1e-9)


@pytest.mark.parametrize("width,height", IMAGE_SIZES)
def test_lossless_round_trips(width: int, height: int) -> None:
    boxes = random_boxes(width, height, seed=3)
    coco = box_ops.coco_xywh_to_xyxy(box_ops.xyxy_to_coco_xywh(boxes))
    percent = box_ops.percent_to_xyxy(box_ops.xyxy_to_percent(boxes, width, height), width, height)
    norm1 = box_ops.norm1_to_xyxy(box_ops.xyxy_to_norm1(boxes, width, height), width, height)
    np.testing.assert_allclose(coco, boxes, atol=1e-9)
    np.testing.assert_allclose(percent, boxes, atol=1e-9)
    np.testing.assert_allclose(norm1, boxes, atol=1e-9)


@pytest.mark.parametrize("space", box_ops.SPACES)
def test_named_space_round_trip(space: str) -> None:
    width, height = 640, 480
    resized = (644, 476)
    boxes = random_boxes(width, height, seed=4)
    there = box_ops.xyxy_to_space(boxes, space, width, height, resized)
    back = box_ops.space_to_xyxy(there, space, width, height, resized)
    assert np.all(np.abs(back - boxes) <= 0.5 * 640 / 476 + 1e-9)


@pytest.mark.parametrize(
    "case,box,width,height,expected",
    [
        ("whole image", [0, 0, 200, 160], 200, 160, [0, 0, 1000, 1000]),
        ("single pixel on a 1000 px image", [3, 5, 4, 6], 1000, 1000, [3, 5, 4, 6]),
        ("half step rounds up", [0.25, 0, 1, 1], 2000, 1000, [0, 0, 1, 1]),
        ("exact half rounds up", [1, 0, 2, 1], 2000, 1000, [1, 0, 1, 1]),
        ("outside image clips", [-10, -10, 250, 170], 200, 160, [0, 0, 1000, 1000]),
    ],
)
def test_xyxy_to_norm1000_cases(
    case: str, box: list[float], width: int, height: int, expected: list[int]
) -> None:
    assert box_ops.xyxy_to_norm1000(box, width, height).tolist() == [expected]


@pytest.mark.parametrize(
    "case,height,width,min_pixels,max_pixels,expected",
    [
        ("small image rounds to multiples of 28", 160, 200, 3136, 12845056, (168, 196)),
        ("large image under the default cap", 4000, 3000, 3136, 12845056, (4004, 2996)),
        ("large image over a 1280-token cap", 4000, 3000, 3136, 1003520, (1148, 840)),
        ("tiny image scaled up to min_pixels", 40, 50, 3136, 12845056, (56, 84)),
        ("round half to even like Python", 70, 70, 3136, 12845056, (56, 56)),
    ],
)
def test_smart_resize_cases(
    case: str,
    height: int,
    width: int,
    min_pixels: int,
    max_pixels: int,
    expected: tuple[int, int],
) -> None:
    resized = box_ops.smart_resize(height, width, 28, min_pixels, max_pixels)
    assert resized == expected
    assert resized[0] % 28 == 0 and resized[1] % 28 == 0
    assert min_pixels <= resized[0] * resized[1] <= max_pixels


@pytest.mark.parametrize(
    "case,height,width,message",
    [
        ("side shorter than factor", 20, 100, "smaller than the patch factor"),
        ("aspect ratio above 200", 28, 6000, "aspect ratio"),
    ],
)
def test_smart_resize_rejects(case: str, height: int, width: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        box_ops.smart_resize(height, width, 28, 3136, 12845056)


def test_smart_resize_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="max_pixels >= min_pixels"):
        box_ops.smart_resize(100, 100, 28, 5000, 4000)


@pytest.mark.parametrize(
    "case,box_a,box_b,expected",
    [
        ("identical", [0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ("disjoint", [0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ("half shifted", [0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ("touching edges of half-open boxes", [0, 0, 10, 10], [10, 0, 20, 10], 0.0),
        ("contained", [0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ("zero-area box", [0, 0, 10, 10], [5, 5, 5, 5], 0.0),
        ("inverted box", [0, 0, 10, 10], [8, 8, 2, 2], 0.0),
        ("both empty", [3, 3, 3, 3], [3, 3, 3, 3], 0.0),
    ],
)
def test_box_iou_cases(case: str, box_a: list[float], box_b: list[float], expected: float) -> None:
    assert box_ops.box_iou(box_a, box_b)[0, 0] == pytest.approx(expected)


def test_box_iou_shape_is_n_by_m() -> None:
    iou = box_ops.box_iou(np.zeros((3, 4)) + [0, 0, 1, 1], np.zeros((5, 4)) + [0, 0, 1, 1])
    assert iou.shape == (3, 5)
    assert np.all(iou == 1.0)


def test_match_boxes_maximises_hits_over_greedy() -> None:
    gt = [[0, 0, 10, 10], [3, 0, 13, 10]]
    pred = [[1, 0, 11, 10], [-2, 0, 8, 10]]
    iou = box_ops.box_iou(pred, gt)
    # Greedy would pair pred 0 with gt 0 (0.82) and leave pred 1 at 0.33 with gt 1.
    assert iou[0, 0] > iou[0, 1] > 0.5 > iou[1, 1]
    matches = box_ops.match_boxes(pred, gt, 0.5)
    assert sorted((p, g) for p, g, _ in matches) == [(0, 1), (1, 0)]


@pytest.mark.parametrize(
    "case,pred,gt,expected_pairs",
    [
        ("no predictions", np.zeros((0, 4)), [[0, 0, 10, 10]], 0),
        ("no targets", [[0, 0, 10, 10]], np.zeros((0, 4)), 0),
        ("one box for two targets", [[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 9, 9]], 1),
        ("below threshold", [[0, 0, 10, 10]], [[6, 0, 16, 10]], 0),
    ],
)
def test_match_boxes_edge_cases(
    case: str, pred: list[list[float]], gt: list[list[float]], expected_pairs: int
) -> None:
    assert len(box_ops.match_boxes(pred, gt, 0.5)) == expected_pairs


@pytest.mark.parametrize(
    "case,value,message",
    [
        ("three numbers", [1, 2, 3], "shape"),
        ("nested wrong width", [[1, 2, 3, 4, 5]], "shape"),
        ("NaN", [0, 0, float("nan"), 1], "NaN"),
    ],
)
def test_as_boxes_rejects(case: str, value: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        box_ops.as_boxes(value)


def test_unknown_space_names_valid_spaces() -> None:
    with pytest.raises(ValueError, match="valid spaces: pixels"):
        box_ops.space_to_xyxy([0, 0, 1, 1], "norm100", 10, 10)


def test_resized_space_needs_size() -> None:
    with pytest.raises(ValueError, match="resized image size"):
        box_ops.space_to_xyxy([0, 0, 1, 1], "resized", 10, 10)


def test_florence_tokens_render_and_reject_out_of_range() -> None:
    assert box_ops.florence_loc_tokens([[0, 1, 998, 999]]) == ["<loc_0><loc_1><loc_998><loc_999>"]
    with pytest.raises(ValueError, match="0..999"):
        box_ops.florence_loc_tokens([[0, 0, 1000, 10]])


def test_non_positive_image_size_rejected() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        box_ops.xyxy_to_norm1000([0, 0, 1, 1], 0, 10)
