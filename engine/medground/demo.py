"""A synthetic demo dataset: textured grey images with labelled lesions and cysts.

Each image holds one to three bright round "lesions" (label 1) and zero to two dark
elongated "cysts" (label 2), drawn with scikit-image so the objects have exact masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import ellipse

from medground.store import write_text_atomic

DEMO_MANIFEST = """\
# Synthetic phantom written by 'mgr demo'; labels: 1 lesion, 2 cyst.
name: demo-phantom
description: Synthetic phantom images with bright lesions and dark cysts.
modality: other
anatomy: phantom
root: .
orientation: unknown
images:
  glob: images/*.png
masks:
  - encoding: label_map
    path: labels/{stem}.png
    labels: {1: lesion, 2: cyst}
classes:
  - name: lesion
    display: bright lesion
  - name: cyst
    display: dark cyst
objects:
  connectivity: 2
  min_object_px: 20
"""


def _free(occupied: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    return not occupied[rows, cols].any()


def write_demo(directory: Path, count: int = 12, seed: int = 0, size: int = 384) -> Path:
    """Write ``count`` images, label maps and ``demo.yaml`` into ``directory``.

    Returns the manifest path.
    """
    rng = np.random.default_rng(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "labels").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        noise = rng.normal(0, 1, (size // 8, size // 8))
        texture = np.kron(noise, np.ones((8, 8)))
        image = 110 + 18 * texture + rng.normal(0, 6, (size, size))
        labels = np.zeros((size, size), np.uint8)
        occupied = np.zeros((size, size), bool)
        for label, number, value in ((1, rng.integers(1, 4), 200), (2, rng.integers(0, 3), 40)):
            placed = 0
            for _ in range(50):
                if placed == number:
                    break
                if label == 1:
                    radius = rng.integers(12, 50)
                    radii = (radius, radius * rng.uniform(0.85, 1.0))
                else:
                    radii = (rng.integers(10, 18), rng.integers(40, 70))
                center = rng.integers(60, size - 60, 2)
                rotation = rng.uniform(0, np.pi)
                rows, cols = ellipse(
                    center[0], center[1], radii[0], radii[1], shape=(size, size), rotation=rotation
                )
                grown_rows, grown_cols = ellipse(
                    center[0],
                    center[1],
                    radii[0] + 8,
                    radii[1] + 8,
                    shape=(size, size),
                    rotation=rotation,
                )
                if not _free(occupied, grown_rows, grown_cols):
                    continue
                occupied[grown_rows, grown_cols] = True
                labels[rows, cols] = label
                image[rows, cols] = value + rng.normal(0, 8, rows.size)
                placed += 1
        picture = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(picture).save(directory / "images" / f"case{index:03d}.png")
        Image.fromarray(labels).save(directory / "labels" / f"case{index:03d}.png")
    manifest = directory / "demo.yaml"
    write_text_atomic(manifest, DEMO_MANIFEST)
    return manifest
