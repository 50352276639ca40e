"""Helpers shared by the tests: paths, the in-process CLI, small raster writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from medground.cli import main

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"
SHARED_DATASETS = (
    "kvasir-seg",
    "isbi2012-em-membrane",
    "hc18-fetal-head",
    "ph2-dermoscopy",
    "busi-breast-ultrasound",
)


def shared_data_dir() -> Path:
    """Return the shared real-data folder: ``$MGR_SHARED_DATA``, else ``<repo>/../shared/data``."""
    configured = os.environ.get("MGR_SHARED_DATA")
    return Path(configured) if configured else REPO.parent / "shared" / "data"


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run the ``mgr`` command in-process and return click's result (exceptions caught)."""
    return CliRunner().invoke(main, ["-q", *map(str, args)], env=env)


# A label-map manifest for the small datasets the tests write; {root} is filled per test.
TINY_MANIFEST = """\
name: tiny
modality: other
root: {root}
images:
  glob: images/*.png
masks:
  - encoding: label_map
    path: labels/{{stem}}.png
    labels: {{1: lesion}}
classes:
  - name: lesion
objects:
  min_object_px: 4
"""


def square_labels(height: int = 80, width: int = 96, value: int = 1) -> np.ndarray:
    """Return an ``(H, W)`` uint8 label map with one 32 x 32 square at x 16..48, y 24..56."""
    labels = np.zeros((height, width), np.uint8)
    labels[24:56, 16:48] = value
    return labels


def write_image(path: Path, array: np.ndarray, **save_options: object) -> Path:
    """Save an array with Pillow, making the parent folders; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_options)
    return path


def tiny_dataset(folder: Path, cases: int = 1) -> Path:
    """Write ``cases`` good image/label pairs and the manifest; return the manifest path."""
    rng = np.random.default_rng(0)
    for index in range(cases):
        picture = rng.integers(0, 255, (80, 96), dtype=np.uint8)
        write_image(folder / "images" / f"good{index}.png", picture)
        write_image(folder / "labels" / f"good{index}.png", square_labels())
    manifest = folder / "tiny.yaml"
    manifest.write_text(TINY_MANIFEST.format(root="."), encoding="utf-8")
    return manifest
