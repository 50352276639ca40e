"""Locate the built-in declarative folders (rules, prompts, schemas, datasets).

In a checkout they sit at the repository root; in an installed wheel they are shipped
as package data under ``medground/_data``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

ResourceKind = Literal["rules", "prompts", "schemas", "datasets"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(kind: ResourceKind) -> Path:
    """Return the folder holding the built-in files of one kind."""
    wheel_dir = _PACKAGE_DIR / "_data" / kind
    if wheel_dir.is_dir():
        return wheel_dir
    checkout_dir = _PACKAGE_DIR.parents[1] / kind
    if checkout_dir.is_dir():
        return checkout_dir
    raise FileNotFoundError(
        f"built-in folder '{kind}' not found in {wheel_dir} or {checkout_dir}; "
        "reinstall the package with 'pip install -e .'"
    )


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load a JSON Schema from the built-in ``schemas/`` folder, e.g. ``record``."""
    path = resource_dir("schemas") / f"{name}.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))
