"""Build small fake run folders: real PNG images and records.jsonl valid against the schema."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator
from PIL import Image

from medground.resources import load_schema


@dataclass(frozen=True)
class Case:
    """One fake record: which image, which split, which target boxes."""

    dataset: str
    modality: str
    case: str
    image: str
    split: str | None
    targets: tuple[tuple[str, tuple[float, float, float, float]], ...]
    size: tuple[int, int]  # (width, height)
    query_index: int = 0


# Two datasets; patient ids are the first folder of source.image. Boxes are whole pixels,
# as the engine derives them from masks.
DEFAULT_CASES: tuple[Case, ...] = (
    Case(
        "kvasir-seg",
        "endoscopy",
        "case01",
        "img1.png",
        "train",
        (("polyp", (30, 40, 90, 100)),),
        (200, 160),
    ),
    Case(
        "kvasir-seg",
        "endoscopy",
        "case01",
        "img2.png",
        "train",
        (("polyp", (50, 20, 150, 90)),),
        (200, 160),
    ),
    Case(
        "kvasir-seg",
        "endoscopy",
        "case02",
        "img1.png",
        "train",
        (("polyp", (10, 10, 60, 70)),),
        (200, 160),
    ),
    Case(
        "kvasir-seg",
        "endoscopy",
        "case03",
        "img1.png",
        "val",
        (("polyp", (80, 60, 170, 150)),),
        (200, 160),
    ),
    Case(
        "kvasir-seg",
        "endoscopy",
        "case04",
        "img1.png",
        "test",
        (("polyp", (20, 30, 100, 110)),),
        (200, 160),
    ),
    Case(
        "kvasir-seg",
        "endoscopy",
        "case04",
        "img2.png",
        "test",
        (("polyp", (60, 40, 190, 150)),),
        (200, 160),
    ),
    Case(
        "kvasir-seg",
        "endoscopy",
        "case04",
        "img1.png",
        "test",
        (("polyp", (20, 30, 100, 110)), ("polyp", (120, 20, 180, 80))),
        (200, 160),
        1,
    ),
    Case(
        "busi",
        "ultrasound",
        "b01",
        "scan.png",
        "train",
        (("benign", (40, 50, 140, 120)),),
        (240, 200),
    ),
    Case(
        "busi",
        "ultrasound",
        "b02",
        "scan.png",
        "test",
        (("malignant", (100, 80, 200, 170)),),
        (240, 200),
    ),
    Case(
        "busi",
        "ultrasound",
        "b03",
        "scan.png",
        "test",
        (("benign", (20, 20, 80, 90)), ("benign", (150, 100, 230, 190))),
        (240, 200),
    ),
)


def write_png(path: Path, width: int, height: int, seed: int) -> None:
    """Write a random RGB PNG of the given size."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_record(case: Case, data_root: Path) -> dict[str, Any]:
    """Build one record for ``case`` whose image lives under ``data_root``."""
    width, height = case.size
    image_path = data_root / case.dataset / case.case / case.image
    target_id = "t" + "-".join(str(int(box[0])) for _, box in case.targets)
    task = "single" if len(case.targets) == 1 else "multi"
    classes = sorted({name for name, _ in case.targets})
    return {
        "id": f"{case.dataset}/{case.case}/{Path(case.image).stem}/{target_id}/q{case.query_index}",
        "dataset": case.dataset,
        "modality": case.modality,
        "anatomy": None,
        "split": case.split,
        "image": {"path": str(image_path), "width": width, "height": height},
        "source": {
            "root": str(data_root / case.dataset),
            "image": f"{case.case}/{case.image}",
            "masks": [f"{case.case}/mask_{case.image}"],
        },
        "query": f"the {' and '.join(classes)} region in {case.case} {case.image}",
        "task": task,
        "targets": [
            {"class": name, "bbox_xyxy": list(box), "object_ids": [f"o{index}"]}
            for index, (name, box) in enumerate(case.targets)
        ],
        "cues": {"size": "medium"},
        "verification": {
            "format": {"verdict": "pass"},
            "rules": {"verdict": "pass", "fired": []},
            "judge": {"verdict": "skipped"},
        },
        "provenance": {
            "manifest": case.dataset,
            "manifest_sha256": hashlib.sha256(case.dataset.encode()).hexdigest(),
            "synthesizer": "template",
            "engine_version": "0.1.0",
        },
    }


def make_run(
    base: Path, cases: tuple[Case, ...] = DEFAULT_CASES, name: str = "run"
) -> tuple[Path, list[dict[str, Any]]]:
    """Write images and ``<base>/<name>/records.jsonl``; return the run folder and records.

    Every record is validated against schemas/record.schema.json first.
    """
    data_root = base / "data"
    validator = Draft202012Validator(load_schema("record"))
    records = []
    for index, case in enumerate(cases):
        record = make_record(case, data_root)
        errors = sorted(validator.iter_errors(record), key=str)
        if errors:
            raise AssertionError(f"fixture record {record['id']} is invalid: {errors[0].message}")
        image_path = Path(record["image"]["path"])
        if not image_path.exists():
            write_png(image_path, *case.size, seed=index)
        records.append(record)

    run_dir = base / name
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "records.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return run_dir, records
