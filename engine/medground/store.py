"""Run state in SQLite and atomic output writers.

Each finished batch is committed in one transaction with its records, rejections and
statistics, so a run killed at any point resumes after the last committed batch and
produces the same outputs as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

REJECTION_COLUMNS = (
    "key",
    "image_key",
    "stage",
    "rule_id",
    "message",
    "query",
    "image_path",
    "targets_json",
)

REJECTION_SCHEMA: dict[str, pl.DataType] = dict.fromkeys(REJECTION_COLUMNS, pl.String())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch INTEGER PRIMARY KEY, n_images INTEGER NOT NULL, stats TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER NOT NULL, batch INTEGER NOT NULL, id TEXT PRIMARY KEY, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    seq INTEGER NOT NULL, batch INTEGER NOT NULL, key TEXT, image_key TEXT, stage TEXT,
    rule_id TEXT, message TEXT, query TEXT, image_path TEXT, targets_json TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER NOT NULL, batch INTEGER NOT NULL, sample_id TEXT, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_batch ON rejections(batch);
CREATE INDEX IF NOT EXISTS samples_batch ON samples(batch);
CREATE INDEX IF NOT EXISTS records_batch ON records(batch);
"""


class RunStore:
    """The SQLite state of one run folder (``run.sqlite``)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(path, timeout=60)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.connection.close()

    def fingerprint(self) -> str | None:
        """Return the fingerprint of the settings the stored batches were made with."""
        row = self.connection.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        return row[0] if row else None

    def reset(self, fingerprint: str) -> None:
        """Forget every batch and record the settings of a fresh run."""
        with self.connection:
            for table in ("batches", "records", "rejections", "samples"):
                self.connection.execute(f"DELETE FROM {table}")
            self.connection.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('fingerprint', ?)", (fingerprint,)
            )

    def done_batches(self) -> set[int]:
        """Return the indices of committed batches."""
        return {row[0] for row in self.connection.execute("SELECT batch FROM batches")}

    def commit_batch(
        self,
        batch: int,
        n_images: int,
        records: list[dict[str, Any]],
        rejections: list[dict[str, Any]],
        stats: dict[str, Any],
        samples: list[dict[str, Any]] | None = None,
    ) -> None:
        """Store one finished batch atomically.

        ``samples`` are the batch's sample-table rows as the rules saw them, rejected
        candidates included (written to ``samples.parquet`` at the end).
        """
        with self.connection:
            self.connection.execute("DELETE FROM records WHERE batch=?", (batch,))
            self.connection.execute("DELETE FROM rejections WHERE batch=?", (batch,))
            self.connection.execute("DELETE FROM samples WHERE batch=?", (batch,))
            self.connection.executemany(
                "INSERT INTO samples(seq, batch, sample_id, body) VALUES (?, ?, ?, ?)",
                [
                    (i, batch, row.get("sample_id"), json.dumps(row, ensure_ascii=False))
                    for i, row in enumerate(samples or [])
                ],
            )
            self.connection.executemany(
                "INSERT INTO records(seq, batch, id, body) VALUES (?, ?, ?, ?)",
                [
                    (i, batch, r["id"], json.dumps(r, ensure_ascii=False))
                    for i, r in enumerate(records)
                ],
            )
            self.connection.executemany(
                "INSERT INTO rejections(seq, batch, key, image_key, stage, rule_id, message, "
                "query, image_path, targets_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (i, batch, *(r.get(c) for c in REJECTION_COLUMNS))
                    for i, r in enumerate(rejections)
                ],
            )
            self.connection.execute(
                "INSERT OR REPLACE INTO batches(batch, n_images, stats) VALUES (?, ?, ?)",
                (batch, n_images, json.dumps(stats)),
            )

    def iter_records(self) -> Iterator[str]:
        """Yield record JSON texts in run order."""
        cursor = self.connection.execute("SELECT body FROM records ORDER BY batch, seq")
        for (body,) in cursor:
            yield body

    def iter_samples(self) -> Iterator[str]:
        """Yield sample-row JSON texts in run order."""
        cursor = self.connection.execute("SELECT body FROM samples ORDER BY batch, seq")
        for (body,) in cursor:
            yield body

    def rejections_frame(self) -> pl.DataFrame:
        """Return every rejection in run order, all in memory (for tests and small runs)."""
        frames = list(self.iter_rejection_frames())
        if not frames:
            return pl.DataFrame(schema=REJECTION_SCHEMA)
        return pl.concat(frames)

    def iter_rejection_frames(self, chunk_rows: int = 10_000) -> Iterator[pl.DataFrame]:
        """Yield the rejections in run order as frames of at most ``chunk_rows`` rows."""
        cursor = self.connection.execute(
            "SELECT " + ", ".join(REJECTION_COLUMNS) + " FROM rejections ORDER BY batch, seq"
        )
        while rows := cursor.fetchmany(chunk_rows):
            yield pl.DataFrame(rows, schema=REJECTION_SCHEMA, orient="row")

    def rejection_counts(self) -> pl.DataFrame:
        """Count rejections per stage and rule, with the first one's key and message.

        Columns: ``stage``, ``rule_id``, ``count``, ``example`` (key), ``message``; rows
        sorted by stage, then by count (descending), then by first occurrence.
        """
        # SQLite takes the bare columns key and message from the row where MIN() is
        # reached, which is the group's first rejection in run order.
        rows = self.connection.execute(
            "SELECT stage, rule_id, COUNT(*) AS count, key, message, "
            "MIN(batch * 4294967296 + seq) AS first FROM rejections "
            "GROUP BY stage, rule_id ORDER BY stage, count DESC, first"
        ).fetchall()
        return pl.DataFrame(
            [row[:5] for row in rows],
            schema={
                "stage": pl.String,
                "rule_id": pl.String,
                "count": pl.Int64,
                "example": pl.String,
                "message": pl.String,
            },
            orient="row",
        )

    def input_rejection_counts(self) -> dict[str, int]:
        """Count, per rule, the inputs rejected whole, most frequent rule first.

        An input is an image, a slice or an unpaired file: rejections at discovery, and
        load or objects rejections keyed by the input itself. Rejections of one part of
        an input (a removed small component, a skipped mask file) are not counted.
        """
        rows = self.connection.execute(
            "SELECT rule_id, COUNT(*) AS count FROM rejections "
            "WHERE stage = 'discover' OR (stage IN ('load', 'objects') AND key = image_key) "
            "GROUP BY rule_id ORDER BY count DESC, rule_id"
        ).fetchall()
        return {rule_id: count for rule_id, count in rows}

    def skipped_file_count(self) -> int:
        """Count the mask files left out on purpose (a label mapped to null)."""
        (count,) = self.connection.execute(
            "SELECT COUNT(*) FROM rejections WHERE stage = 'load' AND key <> image_key"
        ).fetchone()
        return int(count)

    def batch_stats(self) -> list[dict[str, Any]]:
        """Return the statistics of every committed batch, in batch order."""
        return [
            json.loads(s)
            for (s,) in self.connection.execute("SELECT stats FROM batches ORDER BY batch")
        ]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` at once.

    A crash leaves the previous file (or none) and at most a stray ``.tmp`` file, never a
    half-written file under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with open() rather than mkstemp(), whose 0600 mode would survive the rename,
    # so the output file gets the permissions the user's umask allows, as any new file does.
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    temporary.open("xb").close()
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# The name atomic_path gives its temporary files: ".<final name>.<uuid4 hex>.tmp".
_TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


def remove_stray_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed writer left in ``folder``; return them.

    Only names of the form :func:`atomic_path` creates are touched, and only directly in
    ``folder``. Call it before writing there, never while another writer may be working.
    """
    if not folder.is_dir():
        return []
    stray = [p for p in folder.iterdir() if p.is_file() and _TEMPORARY_NAME.match(p.name)]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
