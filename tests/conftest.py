"""Shared fixtures: the repository root and the shared sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """Return the shared sample-data folder (env MGR_SHARED_DATA, else ../shared/data)."""
    return Path(os.environ.get("MGR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def kvasir_root() -> Path:
    """The Kvasir-SEG sample folder, or skip when the shared data is absent."""
    root = shared_data() / "kvasir-seg"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root}; set MGR_SHARED_DATA to its folder")
    return root
