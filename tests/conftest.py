"""Shared fixtures: the real-data folder, CLI runs on it, and small raster writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from medground.cli import main

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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that use it are skipped when it is absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(
            f"shared real data not found at {folder}; set MGR_SHARED_DATA to the folder "
            "that holds kvasir-seg/, hc18-fetal-head/, ..."
        )
    return folder


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run the ``mgr`` command in-process and return click's result (exceptions caught)."""
    return CliRunner().invoke(main, ["-q", *map(str, args)], env=env)


@pytest.fixture(scope="session")
def dataset_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run every shared-data manifest once per session; map dataset name to its run folder."""
    out = tmp_path_factory.mktemp("runs")
    folders = {}
    for name in SHARED_DATASETS:
        # The manifests find their data through ${MGR_SHARED_DATA}, as a user's run would.
        result = invoke(
            "run",
            DATASETS / f"{name}.yaml",
            "--out",
            out,
            env={"MGR_SHARED_DATA": str(shared_data)},
        )
        if result.exit_code != 0:
            pytest.fail(f"mgr run {name} exited with {result.exit_code}:\n{result.output}")
        folders[name] = out / name
    return folders


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the demo dataset and run it; return the run folder."""
    folder = tmp_path_factory.mktemp("demo")
    result = invoke("demo", folder / "data")
    if result.exit_code != 0:
        pytest.fail(f"mgr demo exited with {result.exit_code}:\n{result.output}")
    result = invoke("run", folder / "data" / "demo.yaml", "--out", folder / "out")
    if result.exit_code != 0:
        pytest.fail(f"mgr run demo.yaml exited with {result.exit_code}:\n{result.output}")
    return folder / "out" / "demo-phantom"


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
