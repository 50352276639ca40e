"""SQLite cache of validated VLM replies, and a ledger of every paid call.

The runner passes ``<run_dir>/run.sqlite``; this module owns the tables prefixed
``vlm_``. A reply is committed as soon as it has been validated, before the caller
records any result from it. A run killed at any point and started again therefore finds
every reply it had paid for, and repeats no successful call. Failed and invalid replies
are never cached, so a resumed run sends those requests again.

What is stored: the cache key (a sha256, see :func:`cache_key`), the stage, the model,
the reply text, token counts and cost. Never stored: API keys, request headers or the
request messages themselves.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bump when the request layout changes in a way the key would not see, so old replies
# stop matching instead of being reused for a different question.
CACHE_FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vlm_replies (
    cache_key TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    request_key TEXT,
    content TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vlm_calls (
    call_id INTEGER PRIMARY KEY AUTOINCREMENT,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    request_key TEXT,
    outcome TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_s REAL NOT NULL,
    created_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class CachedReply:
    """A validated reply read from the cache.

    Attributes:
        cache_key: sha256 hex digest the reply is stored under.
        stage: Stage that sent the request, e.g. ``synthesis`` or ``judge``.
        model: litellm model name that produced the reply.
        content: The assistant message text as received.
        prompt_tokens: Input tokens of the original call.
        completion_tokens: Output tokens of the original call.
        cost_usd: Cost of the original call in US dollars.
    """

    cache_key: str
    stage: str
    model: str
    content: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def _image_digest(url: str) -> str:
    """Replace a ``data:`` image URL with the sha256 of the image bytes it encodes."""
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        return url
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        data = payload.encode()
    return f"{header.split(';')[0]};sha256:{hashlib.sha256(data).hexdigest()}"


def _strip_images(value: Any) -> Any:
    if isinstance(value, dict):
        stripped = {key: _strip_images(item) for key, item in value.items()}
        if value.get("type") == "image_url" and isinstance(value.get("image_url"), dict):
            image = dict(stripped["image_url"])
            image["url"] = _image_digest(str(image.get("url", "")))
            stripped["image_url"] = image
        return stripped
    if isinstance(value, list):
        return [_strip_images(item) for item in value]
    return value


def cache_key(
    *,
    stage: str,
    model: str,
    api_base: str | None,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
) -> str:
    """Hash everything that changes a reply into a cache key.

    Args:
        stage: Stage that sends the request, so identical prompts of two stages never share replies.
        model: litellm model name.
        api_base: Endpoint URL, or None for the provider's default.
        messages: Chat messages as sent; base64 images are replaced by the sha256 of
            their bytes, so the key does not grow with the image.
        params: Request parameters that change the reply (temperature, max_tokens, ...).
            They must not contain credentials.

    Returns:
        The sha256 hex digest of the canonical JSON of all arguments.
    """
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "stage": stage,
        "model": model,
        "api_base": api_base,
        "messages": _strip_images(messages),
        "params": params,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ResponseCache:
    """Validated VLM replies and a call ledger in an SQLite database.

    Args:
        db_path: The database file, normally ``<run_dir>/run.sqlite``; its folder is
            created if missing. Other tables in the same file are left alone.

    The database runs in WAL mode with a busy timeout, so several threads of one
    process (and other processes on the same file) can write at once. Every write is
    committed before the method returns.
    """

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL loses no committed transaction when the process is killed, only
            # possibly the last ones on power loss.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM vlm_calls").fetchone()
        except sqlite3.Error as exc:
            raise RuntimeError(
                f"cannot open the VLM cache database {self.db_path}: {exc}; check that the "
                "folder is writable and the file is an SQLite database"
            ) from exc
        # A running total, so that the cost cap check before each request costs no query.
        self._spent_usd = float(row[0])

    def close(self) -> None:
        """Close the connection; later calls raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, key: str) -> CachedReply | None:
        """Return the reply stored under ``key``, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT cache_key, stage, model, content, prompt_tokens, completion_tokens, "
                "cost_usd FROM vlm_replies WHERE cache_key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return CachedReply(*row)

    def put(
        self,
        key: str,
        *,
        stage: str,
        model: str,
        content: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        request_key: str | None = None,
    ) -> None:
        """Store a validated reply and commit it; an existing entry is replaced."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO vlm_replies (cache_key, stage, model, request_key, "
                "content, prompt_tokens, completion_tokens, cost_usd, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    stage,
                    model,
                    request_key,
                    content,
                    prompt_tokens,
                    completion_tokens,
                    cost_usd,
                    _now(),
                ),
            )

    def delete(self, key: str) -> None:
        """Remove the reply stored under ``key``, e.g. one that no longer validates."""
        with self._lock:
            self._conn.execute("DELETE FROM vlm_replies WHERE cache_key = ?", (key,))

    def count(self, stage: str | None = None) -> int:
        """Count cached replies, of one stage or of all."""
        with self._lock:
            if stage is None:
                row = self._conn.execute("SELECT COUNT(*) FROM vlm_replies").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM vlm_replies WHERE stage = ?", (stage,)
                ).fetchone()
        return int(row[0])

    def record_call(
        self,
        *,
        stage: str,
        model: str,
        outcome: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        latency_s: float = 0.0,
        request_key: str | None = None,
    ) -> None:
        """Append one HTTP call to the ledger and commit it.

        ``outcome`` is ``ok``, ``invalid`` or a rejection rule id such as
        ``vlm.timeout``; error messages are not stored.
        """
        with self._lock:
            self._conn.execute(
                "INSERT INTO vlm_calls (stage, model, request_key, outcome, prompt_tokens, "
                "completion_tokens, cost_usd, latency_s, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stage,
                    model,
                    request_key,
                    outcome,
                    prompt_tokens,
                    completion_tokens,
                    cost_usd,
                    latency_s,
                    _now(),
                ),
            )
            self._spent_usd += cost_usd

    def spent_usd(self) -> float:
        """Return the cost of every call in the ledger, across all runs on this file.

        The total is read when the file is opened and then counts the calls recorded
        through this object; calls that another process records meanwhile are missing.
        """
        with self._lock:
            return self._spent_usd

    def call_summary(self) -> list[dict[str, Any]]:
        """Sum calls, tokens and cost per stage, model and outcome, for the run report."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stage, model, outcome, COUNT(*), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(cost_usd) FROM vlm_calls "
                "GROUP BY stage, model, outcome ORDER BY stage, model, outcome"
            ).fetchall()
        return [
            {
                "stage": stage,
                "model": model,
                "outcome": outcome,
                "calls": calls,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost,
            }
            for stage, model, outcome, calls, prompt_tokens, completion_tokens, cost in rows
        ]
