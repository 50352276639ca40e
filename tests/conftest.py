"""Shared fixtures: the real-data folder and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Return the shared real-data folder (env MGR_SHARED_DATA or ../shared/data)."""
    return Path(os.environ.get("MGR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"shared real-data folder not found at {folder}; set MGR_SHARED_DATA")
    return folder
