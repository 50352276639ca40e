"""Mask decoding per encoding, on small files written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medground.config.manifest import Manifest
from medground.io.masks import MaskError, decode_masks


def palette_manifest() -> Manifest:
    return Manifest.model_validate({
        "name": "toy", "modality": "ct", "root": ".",
        "images": {"glob": "*.png"},
        "masks": [{"encoding": "palette", "path": "{stem}_m.png",
                   "colors": {"#ff0000": "tumour"}}],
        "classes": [{"name": "tumour"}],
    })


def test_palette_on_grey_mask_names_the_value(tmp_path: Path) -> None:
    grey = np.zeros((20, 30), np.uint8)
    grey[5:9, 10:14] = 77
    Image.fromarray(grey).save(tmp_path / "a_m.png")
    with pytest.raises(MaskError, match=r"a_m.png: 16 px have colours not in masks.0.colors, "
                       r"e.g. rgb\(77, 77, 77\) at x=10, y=5"):
        decode_masks(palette_manifest(), tmp_path, (("a_m.png",),), {}, (20, 30))


def test_palette_colour_becomes_class(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:9, 10:14] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "a_m.png")
    masks, skipped = decode_masks(palette_manifest(), tmp_path, (("a_m.png",),), {}, (20, 30))
    assert [m.class_name for m in masks] == ["tumour"]
    assert int(masks[0].mask.sum()) == 16
    assert skipped == []
