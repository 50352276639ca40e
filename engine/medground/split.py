"""Group-aware, order-independent train/val/test splits.

Every record gets a group id (a patient or case id) read from one of its fields. The
group id and the seed are hashed with SHA-256 to a number in ``[0, 1)``, and the ratios
cut that interval into train, val and test. All records of a group therefore land in the
same split, and the result does not depend on the order of the records or on which other
records are present.

Because assignment is per group, the realised fractions only approach the ratios when
there are many groups: with ten patients a 0.8/0.1/0.1 split can put none in val.
:func:`assign_splits` logs the realised counts.

Manifest usage::

    split:
      ratios: {train: 0.8, val: 0.1, test: 0.1}
      seed: 13
      group_key: {regex: "^(?P<group>[^/]+)/", field: source.image}
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from typing import Any, Literal, TypeVar

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)

SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")
_RATIO_TOLERANCE = 1e-6

Records = TypeVar("Records", pl.DataFrame, list[dict[str, Any]])


class SplitRatios(BaseModel):
    """Fractions of groups that go to train, val and test; they sum to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: float = Field(ge=0.0, le=1.0)
    val: float = Field(ge=0.0, le=1.0)
    test: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > _RATIO_TOLERANCE:
            raise ValueError(
                f"ratios must sum to 1; got train={self.train} + val={self.val} + "
                f"test={self.test} = {total:g}"
            )
        return self


class RegexGroupKey(BaseModel):
    """Group id taken from a regular expression applied to a record field.

    The named group ``group`` gives the id when present, else the first capture group.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    regex: str
    field: str = "source.image"

    @field_validator("regex")
    @classmethod
    def _compiles_with_group(cls, value: str) -> str:
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"regex {value!r} does not compile: {exc}") from exc
        if pattern.groups == 0:
            raise ValueError(
                f"regex {value!r} has no capture group; wrap the patient or case id in "
                "(?P<group>...) or (...)"
            )
        return value


class FieldGroupKey(BaseModel):
    """Group id taken verbatim from a record field, e.g. ``source.image``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str


class SplitConfig(BaseModel):
    """Split settings, read from the ``split:`` block of a manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratios: SplitRatios = SplitRatios(train=0.8, val=0.1, test=0.1)
    seed: int = 0
    group_key: RegexGroupKey | FieldGroupKey = FieldGroupKey(field="source.image")
    # True sends the whole dataset to test, for zero-shot evaluation on an unseen dataset.
    held_out: bool = False


def split_for_group(group_id: str, ratios: SplitRatios, seed: int) -> SplitName:
    """Return the split of one group id; the same id, ratios and seed give the same split."""
    digest = hashlib.sha256(f"{seed}\x00{group_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < ratios.train:
        return "train"
    if position < ratios.train + ratios.val:
        return "val"
    return "test"


def _field_value(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def _record_label(record: dict[str, Any], index: int) -> str:
    record_id = record.get("id") if isinstance(record, dict) else None
    return f"record {index} (id {record_id!r})" if record_id else f"record {index}"


def group_ids(records: pl.DataFrame | list[dict[str, Any]], config: SplitConfig) -> list[str]:
    """Read the group id of every record from the field ``config.group_key`` names.

    Raises:
        KeyError: if a record lacks the field.
        ValueError: if the regex does not match a record's field value.
    """
    rows = records.to_dicts() if isinstance(records, pl.DataFrame) else records
    key = config.group_key
    pattern = re.compile(key.regex) if isinstance(key, RegexGroupKey) else None

    ids: list[str] = []
    for index, record in enumerate(rows):
        try:
            value = _field_value(record, key.field)
        except KeyError as exc:
            raise KeyError(
                f"{_record_label(record, index)} has no field '{key.field}' (missing key "
                f"{exc.args[0]!r}); set split.group_key.field to a field every record has, "
                "e.g. source.image or dataset"
            ) from exc
        if value is None:
            raise ValueError(
                f"{_record_label(record, index)} has field '{key.field}' = null; "
                "a group id cannot be empty"
            )
        text = str(value)
        if pattern is None:
            ids.append(text)
            continue

        match = pattern.search(text)
        if match is None:
            raise ValueError(
                f"split.group_key.regex {pattern.pattern!r} does not match "
                f"{key.field} = {text!r} of {_record_label(record, index)}; "
                "fix the regex so every record yields a patient or case id"
            )
        group = match.group("group") if "group" in pattern.groupindex else match.group(1)
        if not group:
            raise ValueError(
                f"split.group_key.regex {pattern.pattern!r} captured an empty group id from "
                f"{key.field} = {text!r} of {_record_label(record, index)}"
            )
        ids.append(group)
    return ids


def assign_splits(records: Records, config: SplitConfig) -> Records:
    """Set ``split`` on every record so that no group appears in two splits.

    Args:
        records: a polars DataFrame with one row per record, or a list of record dicts.
            Nested fields such as ``source.image`` are read from struct columns or dicts.
        config: the split settings.

    Returns:
        The same kind of container with ``split`` set to ``train``, ``val`` or ``test``.
        A DataFrame gets its ``split`` column replaced, a list gets shallow copies of
        its dicts, and the input is not modified.
    """
    rows = records.to_dicts() if isinstance(records, pl.DataFrame) else records
    if config.held_out:
        splits: list[str] = ["test"] * len(rows)
        logger.info("split: held_out is set, so all %d records go to test", len(rows))
    else:
        ids = group_ids(rows, config)
        by_group = {group: split_for_group(group, config.ratios, config.seed) for group in ids}
        splits = [by_group[group] for group in ids]
        group_counts = Counter(by_group.values())
        logger.info(
            "split: %d groups -> train %d, val %d, test %d (records: %s)",
            len(by_group),
            group_counts["train"],
            group_counts["val"],
            group_counts["test"],
            dict(Counter(splits)),
        )

    if isinstance(records, pl.DataFrame):
        return records.with_columns(pl.Series("split", splits, dtype=pl.String))
    return [{**record, "split": split} for record, split in zip(records, splits, strict=True)]
