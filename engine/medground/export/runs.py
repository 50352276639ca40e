"""Read the accepted records of finished runs and write files atomically."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from medground.resources import load_schema
from medground.store import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"


class RecordFileError(ValueError):
    """A records file that is missing, unreadable or breaks the record contract."""


@dataclass(frozen=True)
class LoadedRecords:
    """Records read from one or more runs, with where each came from."""

    records: list[dict[str, Any]]
    sources: list[Path]


def records_path(path: Path) -> Path:
    """Return the ``records.jsonl`` of a run folder, or ``path`` itself if it is a file."""
    if path.is_dir():
        candidate = path / RECORDS_FILE
        if not candidate.is_file():
            raise RecordFileError(
                f"{path} is a folder without {RECORDS_FILE}; pass a run folder written by "
                "'mgr run' or a records.jsonl file"
            )
        return candidate
    if not path.is_file():
        raise RecordFileError(f"{path} not found; pass a run folder or a records.jsonl file")
    return path


def read_records(path: Path, validate: bool = True) -> list[dict[str, Any]]:
    """Read one records file, one JSON object per line, checking each against the schema.

    Raises:
        RecordFileError: naming the file, line and the first schema violation.
    """
    file_path = records_path(path)
    validator = Draft202012Validator(load_schema("record")) if validate else None
    records: list[dict[str, Any]] = []
    with file_path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordFileError(
                    f"{file_path}:{line_number}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            if validator is not None:
                error = next(iter(validator.iter_errors(record)), None)
                if error is not None:
                    location = "/".join(str(part) for part in error.absolute_path) or "<record>"
                    raise RecordFileError(
                        f"{file_path}:{line_number}: record breaks "
                        f"schemas/record.schema.json at '{location}': {error.message}"
                    )
            records.append(record)
    logger.debug("read %d records from %s", len(records), file_path)
    return records


def load_runs(paths: Iterable[Path], validate: bool = True) -> LoadedRecords:
    """Read and concatenate the records of several runs; ids must be unique across them.

    Raises:
        RecordFileError: on an unreadable file, a schema violation or a duplicate id.
    """
    records: list[dict[str, Any]] = []
    sources: list[Path] = []
    seen: dict[str, Path] = {}
    for path in paths:
        file_path = records_path(Path(path))
        for record in read_records(file_path, validate=validate):
            if record["id"] in seen:
                raise RecordFileError(
                    f"record id {record['id']!r} appears in both {seen[record['id']]} and "
                    f"{file_path}; export each run once"
                )
            seen[record["id"]] = file_path
            records.append(record)
        sources.append(file_path)
    if not records:
        raise RecordFileError("no records found in " + ", ".join(str(path) for path in sources))
    return LoadedRecords(records=records, sources=sources)


def provenance_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one entry per (manifest, manifest_sha256, engine_version) with its record count."""
    counts = Counter(
        (
            record["provenance"]["manifest"],
            record["provenance"]["manifest_sha256"],
            record["provenance"]["engine_version"],
        )
        for record in records
    )
    return [
        {"manifest": manifest, "manifest_sha256": sha, "engine_version": version, "records": n}
        for (manifest, sha, version), n in sorted(counts.items())
    ]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write pretty-printed JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line atomically."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(path, text)
