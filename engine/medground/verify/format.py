"""Verification stage 1: every candidate record must match ``schemas/record.schema.json``.

Each record is checked with a validator compiled to Python code by fastjsonschema, about
twenty times faster than interpreting the schema. When it reports a problem, jsonschema
(the reference implementation of draft 2020-12) checks the record again and its verdict
and message are the ones recorded, so the fast path can only speed up valid records.
"""

from __future__ import annotations

from typing import Any

import fastjsonschema
import jsonschema

from medground.resources import load_schema


class RecordChecker:
    """Checks output records against the record schema."""

    def __init__(self, schema: dict[str, Any] | None = None):
        self.schema = schema if schema is not None else load_schema("record")
        self._fast = fastjsonschema.compile(self.schema)
        self._reference = jsonschema.Draft202012Validator(self.schema)

    def problem(self, record: dict[str, Any]) -> str | None:
        """Return a readable description of the first schema violation, or None."""
        try:
            self._fast(record)
            return None
        except fastjsonschema.JsonSchemaException:
            pass
        errors = sorted(self._reference.iter_errors(record), key=lambda e: list(e.path))
        if not errors:
            return None
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(record)"
        return f"record field {where}: {first.message}"
