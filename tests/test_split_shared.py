"""Splits on the shared datasets: no patient or case group lands in two splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medground.config.loader import load_manifest
from medground.resources import resource_dir
from medground.runner import RunOptions, run
from medground.split import group_ids

DATASETS = ["kvasir-seg", "hc18-fetal-head", "ph2-dermoscopy", "busi-breast-ultrasound",
            "isbi2012-em-membrane"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", DATASETS)
def test_no_group_crosses_splits(name: str, shared_data: Path, tmp_path: Path) -> None:
    manifest_path = resource_dir("datasets") / f"{name}.yaml"
    root = shared_data / name
    summary = run(manifest_path, RunOptions(out_dir=tmp_path, root=root, previews=False))
    lines = (summary.out / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    config = load_manifest(manifest_path, root).manifest.split
    splits_by_group: dict[str, set[str]] = {}
    for group, record in zip(group_ids(records, config), records, strict=True):
        splits_by_group.setdefault(group, set()).add(record["split"])
    crossing = {g: s for g, s in splits_by_group.items() if len(s) > 1}
    assert records
    assert not crossing


@pytest.mark.shared_data
def test_hc18_acquisitions_share_a_split(shared_data: Path, tmp_path: Path) -> None:
    manifest_path = resource_dir("datasets") / "hc18-fetal-head.yaml"
    summary = run(manifest_path, RunOptions(out_dir=tmp_path, root=shared_data /
                                            "hc18-fetal-head", previews=False))
    records = [json.loads(line) for line in (summary.out / "records.jsonl").read_text()
               .splitlines()]
    splits = {r["source"]["image"]: r["split"] for r in records}
    assert splits["training_set/010_HC.png"] == splits["training_set/010_2HC.png"]
