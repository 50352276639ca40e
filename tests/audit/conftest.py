"""Fake run folders for the audit tests: real PNGs and schema-valid records in tmp_path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from medground.resources import load_schema

MANIFEST_SHA256 = hashlib.sha256(b"fake manifest").hexdigest()


def write_png(path: Path, width: int, height: int, box: tuple[int, int, int, int]) -> None:
    """Write a grey gradient PNG, (H, W) uint8, with a bright rectangle where ``box`` is."""
    rows = np.linspace(40, 120, height, dtype=np.float64)[:, None]
    cols = np.linspace(0, 40, width, dtype=np.float64)[None, :]
    array = (rows + cols).astype(np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


def make_record(
    dataset: str,
    case: str,
    image_path: Path,
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    *,
    task: str = "single",
    split: str | None = "test",
    query: str | None = None,
) -> dict[str, Any]:
    """Return a record valid against schemas/record.schema.json."""
    return {
        "id": f"{dataset}/{case}/t1/q0",
        "dataset": dataset,
        "modality": "endoscopy",
        "anatomy": "colon",
        "split": split,
        "image": {"path": str(image_path), "width": size[0], "height": size[1]},
        "source": {
            "root": str(image_path.parent),
            "image": image_path.name,
            "masks": [f"masks/{image_path.name}"],
        },
        "query": query or f"the polyp in {case}",
        "task": task,
        "targets": [{"class": "polyp", "bbox_xyxy": list(box), "object_ids": [f"{case}/o1"]}],
        "verification": {
            "format": {"verdict": "pass"},
            "rules": {"verdict": "pass", "fired": []},
            "judge": {"verdict": "skipped", "reason": "offline"},
        },
        "provenance": {
            "manifest": f"{dataset}.yaml",
            "manifest_sha256": MANIFEST_SHA256,
            "synthesizer": "template",
            "engine_version": "0.1.0",
        },
    }


RunFactory = Callable[..., Path]


@pytest.fixture
def record_validator() -> Draft202012Validator:
    """Validator of the record contract."""
    return Draft202012Validator(load_schema("record"))


@pytest.fixture
def make_run(tmp_path: Path, record_validator: Draft202012Validator) -> RunFactory:
    """Return a factory that writes a run folder ``tmp_path/runs/<dataset>``.

    Records cycle through ``tasks``; every third record is in ``train`` unless
    ``all_test``. Rejected rows: ``n_rejected`` reviewable ones (from the rules stage)
    plus one discover-stage row without a query; ``reviewable_columns=False`` leaves out
    ``query``, ``image_path`` and ``targets_json``.
    """

    def factory(
        dataset: str = "kvasir-seg",
        n_records: int = 12,
        tasks: tuple[str, ...] = ("single", "multi"),
        *,
        all_test: bool = True,
        n_rejected: int = 4,
        reviewable_columns: bool = True,
        size: tuple[int, int] = (96, 64),
        queries: dict[int, str] | None = None,
    ) -> Path:
        run_dir = tmp_path / "runs" / dataset
        images_dir = tmp_path / "data" / dataset / "images"
        records = []
        for index in range(n_records):
            box = (10 + index % 5, 8 + index % 3, 40 + index % 7, 30 + index % 4)
            image_path = images_dir / f"case{index:03d}.png"
            write_png(image_path, size[0], size[1], box)
            split = "test" if all_test or index % 3 else "train"
            record = make_record(
                dataset,
                f"case{index:03d}",
                image_path,
                size,
                box,
                task=tasks[index % len(tasks)],
                split=split,
                query=(queries or {}).get(index),
            )
            record_validator.validate(record)
            records.append(record)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "records.jsonl").write_text(
            "".join(json.dumps(record) + "\n" for record in records), encoding="utf-8"
        )

        rows = []
        for index in range(n_rejected):
            box = (20, 12, 50 + index, 40)
            image_path = images_dir / f"rejected{index:03d}.png"
            write_png(image_path, size[0], size[1], box)
            rows.append(
                {
                    "key": f"{dataset}/rejected{index:03d}/t1/q0",
                    "stage": "rules",
                    "rule_id": "size.too_small" if index % 2 else "laterality.unknown",
                    "message": "rejected by a rule",
                    "image_key": f"{dataset}/rejected{index:03d}",
                    "query": f"the small polyp {index}",
                    "image_path": str(image_path),
                    "targets_json": json.dumps(
                        [{"class": "polyp", "bbox_xyxy": list(box), "object_ids": ["o1"]}]
                    ),
                }
            )
        rows.append(
            {
                "key": f"{dataset}/unpaired",
                "stage": "discover",
                "rule_id": "discover.unpaired",
                "message": "image has no mask",
                "image_key": f"{dataset}/unpaired",
                "query": None,
                "image_path": None,
                "targets_json": None,
            }
        )
        table = pl.DataFrame(rows, schema={name: pl.String for name in rows[0]})
        if not reviewable_columns:
            table = table.drop("query", "image_path", "targets_json")
        table.write_parquet(run_dir / "rejected.parquet")
        return run_dir

    return factory
