"""Load and write reviewers' decisions files (``models.DecisionsFile``)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from medground.audit._files import write_text_atomic
from medground.audit.models import DECISIONS_FORMAT, DecisionsFile
from medground.audit.runs import AuditInputError


def load_decisions(path: Path) -> DecisionsFile:
    """Load and validate one decisions file.

    Raises:
        AuditInputError: If the file is missing, not JSON, a Label Studio export (which
            must be converted first) or invalid against the decisions model.
    """
    if not path.is_file():
        raise AuditInputError(f"decisions file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AuditInputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc

    if isinstance(data, list):
        raise AuditInputError(
            f"{path} is a JSON list, which looks like a Label Studio export; convert it with "
            f"'mgr audit import-labelstudio {path} --pack PACK_DIR' and report on the output"
        )
    if not isinstance(data, dict) or data.get("format") != DECISIONS_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise AuditInputError(
            f"{path}: not a decisions file (format is {found!r}, expected "
            f"{DECISIONS_FORMAT!r}); download it from the review page's 'Download decisions'"
        )
    try:
        return DecisionsFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = "/".join(str(part) for part in first["loc"])
        raise AuditInputError(
            f"{path}: invalid decisions file at '{location}': {first['msg']} "
            f"(value {first.get('input')!r})"
        ) from exc


def write_decisions(decisions: DecisionsFile, path: Path) -> None:
    """Write a decisions file atomically."""
    write_text_atomic(path, decisions.model_dump_json(indent=2, by_alias=True) + "\n")
