"""Image and mask file formats, run end to end: every format gives the same box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support import invoke, square_labels, write_image

EXPECTED_BOX = [16, 24, 48, 56]

MANIFEST = """\
name: formats
modality: other
root: .
images:
  glob: images/*
masks:
  - encoding: binary
    path: masks/{{stem}}{mask_suffix}
    class: lesion
    threshold: 127
classes:
  - name: lesion
"""


def _picture(mode: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if mode == "L":
        return rng.integers(0, 255, (80, 96), dtype=np.uint8)
    if mode == "I;16":
        return rng.integers(0, 65535, (80, 96), dtype=np.uint16)
    channels = 3 if mode == "RGB" else 4
    return rng.integers(0, 255, (80, 96, channels), dtype=np.uint8)


def _mask(mode: str) -> np.ndarray:
    square = square_labels().astype(bool)
    if mode == "L":
        return square.astype(np.uint8) * 255
    if mode == "I;16":
        return square.astype(np.uint16) * 65535
    if mode == "1":
        return square
    channels = 3 if mode == "RGB" else 4
    stacked = np.repeat((square.astype(np.uint8) * 255)[:, :, None], channels, axis=2)
    if channels == 4:
        stacked[:, :, 3] = 255
    return stacked


# (case, image suffix, image mode, mask suffix, mask mode)
FORMAT_CASES = [
    ("png-grey", ".png", "L", ".png", "L"),
    ("png-16bit", ".png", "I;16", ".png", "I;16"),
    ("png-rgba", ".png", "RGBA", ".png", "RGBA"),
    ("png-1bit-mask", ".png", "RGB", ".png", "1"),
    ("jpeg-rgb", ".jpg", "RGB", ".jpg", "RGB"),
    ("jpeg-grey", ".jpeg", "L", ".jpeg", "L"),
    ("bmp-rgb", ".bmp", "RGB", ".bmp", "RGB"),
    ("bmp-1bit-mask", ".bmp", "L", ".bmp", "1"),
    ("tiff-16bit", ".tif", "I;16", ".tif", "I;16"),
    ("tiff-rgb", ".tiff", "RGB", ".tiff", "L"),
]


@pytest.mark.parametrize(
    ("image_suffix", "image_mode", "mask_suffix", "mask_mode"),
    [row[1:] for row in FORMAT_CASES],
    ids=[row[0] for row in FORMAT_CASES],
)
def test_format_gives_tight_box(
    tmp_path: Path, image_suffix: str, image_mode: str, mask_suffix: str, mask_mode: str
) -> None:
    options = {"quality": 100} if image_suffix in (".jpg", ".jpeg") else {}
    write_image(tmp_path / "images" / f"scan{image_suffix}", _picture(image_mode), **options)
    write_image(tmp_path / "masks" / f"scan{mask_suffix}", _mask(mask_mode), **options)
    manifest = tmp_path / "formats.yaml"
    manifest.write_text(MANIFEST.format(mask_suffix=mask_suffix), encoding="utf-8")

    result = invoke("run", manifest, "--out", tmp_path / "out", "--no-preview")
    lines = (tmp_path / "out" / "formats" / "records.jsonl").read_text().splitlines()
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1
    assert json.loads(lines[0])["targets"][0]["bbox_xyxy"] == EXPECTED_BOX


def test_pixel_box_is_half_open(tmp_path: Path) -> None:
    mask = np.zeros((80, 96), np.uint8)
    mask[5:13, 3:11] = 255  # 8 x 8 px starting at column 3, row 5
    write_image(tmp_path / "images" / "dot.png", np.full((80, 96), 90, np.uint8))
    write_image(tmp_path / "masks" / "dot.png", mask)
    manifest = tmp_path / "formats.yaml"
    manifest.write_text(MANIFEST.format(mask_suffix=".png"), encoding="utf-8")
    result = invoke("run", manifest, "--out", tmp_path / "out", "--no-preview")
    record = json.loads((tmp_path / "out" / "formats" / "records.jsonl").read_text())
    assert result.exit_code == 0, result.output
    assert record["targets"][0]["bbox_xyxy"] == [3, 5, 11, 13]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_channel_spread_is_the_largest_pairwise_channel_difference(dtype: type) -> None:
    from medground.io.raster import channel_spread, colour_planes

    rng = np.random.default_rng(7)
    top = 250 if dtype == np.uint8 else 60_000
    array = rng.integers(0, top, size=(31, 17, 3)).astype(dtype)
    wide = array.astype(np.int64)
    expected = max(
        int(np.abs(wide[..., a] - wide[..., b]).max()) for a, b in ((0, 1), (1, 2), (0, 2))
    )
    assert channel_spread(array) == expected
    assert channel_spread(colour_planes(array), axis=0) == expected
    grey = np.repeat(array[..., :1], 3, axis=2)
    assert channel_spread(grey) == 0
    assert channel_spread(array[..., 0]) == 0


def test_channel_sum_on_planes() -> None:
    from medground.io.raster import channel_sum, colour_planes

    array = np.random.default_rng(8).integers(0, 256, size=(9, 13, 4)).astype(np.uint8)
    expected = array[..., :3].astype(np.int64).sum(axis=2)
    assert np.array_equal(channel_sum(array), expected)
    assert np.array_equal(channel_sum(colour_planes(array), axis=0), expected)


def test_grey_image_windows_and_range() -> None:
    from medground.io.raster import GreyImage

    rgb = np.random.default_rng(9).integers(0, 256, size=(20, 30, 3)).astype(np.uint8)
    full = (rgb.astype(np.float32).sum(axis=2) * np.float32(1 / 3)).astype(np.float32)
    grey = GreyImage(rgb)
    assert grey.shape == (20, 30)
    assert np.array_equal(grey[3:9, 4:17], full[3:9, 4:17])
    assert grey.value_range() == (float(full.min()), float(full.max()))

    single = rgb[:, :, 0]
    assert np.array_equal(GreyImage(single)[2:5, 1:4], single[2:5, 1:4])
    assert GreyImage(single).value_range() == (float(single.min()), float(single.max()))
