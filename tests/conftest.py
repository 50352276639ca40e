"""Shared fixtures: the real-data folder and CLI runs on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import DATASETS, SHARED_DATASETS, invoke, shared_data_dir


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
