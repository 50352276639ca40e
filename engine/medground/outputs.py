"""Write a run's output files from its committed state, each one atomically."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from medground.store import REJECTION_SCHEMA, RunStore, atomic_path

if TYPE_CHECKING:
    from medground.runner import Pipeline, RunOptions, RunSummary

logger = logging.getLogger(__name__)

RECORD_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "dataset": pl.String(),
    "modality": pl.String(),
    "anatomy": pl.String(),
    "split": pl.String(),
    "image_path": pl.String(),
    "image_width": pl.Int64(),
    "image_height": pl.Int64(),
    "query": pl.String(),
    "task": pl.String(),
    "targets": pl.List(
        pl.Struct(
            {
                "class": pl.String(),
                "bbox_xyxy": pl.List(pl.Float64()),
                "object_ids": pl.List(pl.String()),
            }
        )
    ),
    "source_json": pl.String(),
    "cues_json": pl.String(),
    "verification_json": pl.String(),
    "provenance_json": pl.String(),
}

# Rows per write: peak memory of the output phase grows with it (measured: 10,000-record
# chunks added about 100 MiB at 10,000 images; 2,000 keeps the peak flat).
_CHUNK = 2_000


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """Flatten a record into a row of ``records.parquet``."""
    return {
        "id": record["id"],
        "dataset": record["dataset"],
        "modality": record["modality"],
        "anatomy": record.get("anatomy"),
        "split": record.get("split"),
        "image_path": record["image"]["path"],
        "image_width": record["image"]["width"],
        "image_height": record["image"]["height"],
        "query": record["query"],
        "task": record["task"],
        "targets": [
            {
                "class": t["class"],
                "bbox_xyxy": [float(v) for v in t["bbox_xyxy"]],
                "object_ids": t["object_ids"],
            }
            for t in record["targets"]
        ],
        "source_json": json.dumps(record["source"]),
        "cues_json": json.dumps(record.get("cues", {})),
        "verification_json": json.dumps(record["verification"]),
        "provenance_json": json.dumps(record["provenance"]),
    }


def _chunks(lines: Iterator[str]) -> Iterator[list[str]]:
    while chunk := list(islice(lines, _CHUNK)):
        yield chunk


def write_records(store: RunStore, out: Path) -> int:
    """Write ``records.jsonl`` and ``records.parquet``, streaming from the store."""
    count = 0
    with (
        atomic_path(out / "records.jsonl") as jsonl_tmp,
        atomic_path(out / "records.parquet") as parquet_tmp,
    ):
        empty = pl.DataFrame(schema=RECORD_TABLE_SCHEMA).to_arrow()
        with (
            jsonl_tmp.open("w", encoding="utf-8") as jsonl,
            pq.ParquetWriter(parquet_tmp, empty.schema) as parquet,
        ):
            for chunk in _chunks(store.iter_records()):
                jsonl.writelines(line + "\n" for line in chunk)
                rows = [record_row(json.loads(line)) for line in chunk]
                table = pl.DataFrame(rows, schema=RECORD_TABLE_SCHEMA, orient="row").to_arrow()
                parquet.write_table(table.cast(empty.schema))
                count += len(chunk)
            if count == 0:
                parquet.write_table(empty)
    return count


SAMPLE_VERDICT_COLUMNS: dict[str, pl.DataType] = {
    "rules_verdict": pl.String(),
    "rules_fired": pl.String(),
}
RULE_FILES_KEY = b"medground.rule_files"


def write_rejections(store: RunStore, out: Path) -> int:
    """Write ``rejected.parquet``, streaming from the store; return the row count."""
    count = 0
    empty = pl.DataFrame(schema=REJECTION_SCHEMA).to_arrow()
    with (
        atomic_path(out / "rejected.parquet") as temporary,
        pq.ParquetWriter(temporary, empty.schema) as parquet,
    ):
        for frame in store.iter_rejection_frames(_CHUNK):
            parquet.write_table(frame.to_arrow().cast(empty.schema))
            count += frame.height
        if count == 0:
            parquet.write_table(empty)
    return count


def write_samples(store: RunStore, out: Path, rule_files: list[Path]) -> int:
    """Write ``samples.parquet``: every sample row the rules saw, with its verdict.

    The rule files of the run are stored in the file's metadata under
    ``medground.rule_files`` (a JSON list), so ``mgr rules explain`` can evaluate them again.
    """
    from medground.verify.columns import table_schema

    schema = {**table_schema(), **SAMPLE_VERDICT_COLUMNS}
    empty = pl.DataFrame(schema=schema).to_arrow()
    metadata = {RULE_FILES_KEY: json.dumps([str(p) for p in rule_files]).encode()}
    arrow_schema = empty.schema.with_metadata(metadata)
    count = 0
    with (
        atomic_path(out / "samples.parquet") as temporary,
        pq.ParquetWriter(temporary, arrow_schema) as parquet,
    ):
        for chunk in _chunks(store.iter_samples()):
            rows = [json.loads(line) for line in chunk]
            table = pl.DataFrame(rows, schema=schema, orient="row").to_arrow()
            parquet.write_table(table.cast(arrow_schema))
            count += len(chunk)
        if count == 0:
            parquet.write_table(empty.cast(arrow_schema))
    return count


def write_outputs(
    store: RunStore,
    out: Path,
    pipeline: Pipeline,
    options: RunOptions,
    started: float,
    resumed: int,
    stopped: str | None = None,
) -> RunSummary:
    """Write records, rejections, the report and previews; return the run summary.

    ``stopped`` is the reason a run ended before its last batch; the report repeats it.
    """
    from medground.preview import write_previews
    from medground.report import empty_splits, write_report
    from medground.runner import RunSummary

    accepted = write_records(store, out)
    write_samples(store, out, pipeline.rules.files)
    rejected = write_rejections(store, out)
    stats = store.batch_stats()
    seconds = time.perf_counter() - started
    counts = store.rejection_counts()
    empty = empty_splits(pipeline, stats)
    if empty:
        logger.warning(
            "%s: split(s) %s received no record; too few groups for the split ratios",
            pipeline.loaded.manifest.name,
            ", ".join(empty),
        )
    write_report(out, pipeline, stats, counts, accepted, seconds, stopped=stopped)
    if options.previews:
        write_previews(out, n=options.preview_count, seed=pipeline.seed)
    images = sum(s["images"] for s in stats)
    by_stage: dict[str, int] = {}
    removed = 0
    for row in counts.iter_rows(named=True):
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + row["count"]
        if row["rule_id"] == "objects.min_object_size":
            removed += row["count"]
    return RunSummary(
        out,
        images,
        accepted,
        rejected,
        seconds,
        resumed,
        stopped,
        sources=sum(s.get("items", s["images"]) for s in stats),
        volumes=pipeline.loaded.manifest.volume is not None,
        rejected_by_stage=by_stage,
        removed_components=removed,
        inputs_without_target=store.input_rejection_counts(),
        skipped_files=store.skipped_file_count(),
    )
