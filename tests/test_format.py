"""The record check: the compiled fast path agrees with jsonschema on valid and bad records."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import fastjsonschema
import pytest

from medground.verify.format import RecordChecker

VALID: dict[str, Any] = {
    "id": "demo/case000/t0/q0",
    "dataset": "demo",
    "modality": "other",
    "anatomy": None,
    "split": "train",
    "image": {"path": "/data/case000.png", "width": 64, "height": 48, "sha256": "a" * 64},
    "source": {"root": "/data", "image": "case000.png", "masks": ["labels/case000.png"],
               "slice": None},
    "query": "Find the lesion.",
    "task": "single",
    "targets": [{"class": "lesion", "bbox_xyxy": [3, 5, 4, 6], "object_ids": ["lesion-1"]}],
    "cues": {"size": "small"},
    "verification": {"format": {"verdict": "pass"}, "rules": {"verdict": "pass", "fired": []},
                     "judge": {"verdict": "skipped", "reason": "no judge configured"}},
    "provenance": {"manifest": "demo", "manifest_sha256": "b" * 64, "synthesizer": "template",
                   "model": None, "prompt_sha256": None, "template_id": "single.plain",
                   "seed": 0, "engine_version": "0.1.0"},
}


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        node = record
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda record: record.pop(key)


MUTATIONS = [
    pytest.param(_set(("task",), "pointing"), "task", id="unknown-task"),
    pytest.param(_set(("split",), "holdout"), "split", id="unknown-split"),
    pytest.param(_set(("targets", 0, "bbox_xyxy"), [1, 2, 3]), "targets/0/bbox_xyxy",
                 id="box-with-three-numbers"),
    pytest.param(_set(("targets", 0, "bbox_xyxy"), [-1, 2, 3, 4]), "targets/0/bbox_xyxy/0",
                 id="negative-coordinate"),
    pytest.param(_set(("targets",), []), "targets", id="no-target"),
    pytest.param(_set(("image", "width"), 0), "image/width", id="zero-width"),
    pytest.param(_set(("id",), "no slashes"), "id", id="id-pattern"),
    pytest.param(_set(("extra",), 1), "(record)", id="unknown-top-level-key"),
    pytest.param(_drop("query"), "(record)", id="missing-query"),
    pytest.param(_set(("verification", "judge", "verdict"), "maybe"),
                 "verification/judge/verdict", id="unknown-verdict"),
    pytest.param(_set(("provenance", "manifest_sha256"), "xyz"), "provenance/manifest_sha256",
                 id="hash-pattern"),
]


@pytest.fixture(scope="module")
def checker() -> RecordChecker:
    return RecordChecker()


def test_valid_record_passes(checker: RecordChecker) -> None:
    assert checker.problem(copy.deepcopy(VALID)) is None


@pytest.mark.parametrize(("mutate", "where"), MUTATIONS)
def test_bad_record_is_named(checker: RecordChecker, mutate: Callable[[dict[str, Any]], None],
                             where: str) -> None:
    record = copy.deepcopy(VALID)
    mutate(record)
    problem = checker.problem(record)
    assert problem is not None
    assert problem.startswith(f"record field {where}:")


@pytest.mark.parametrize(("mutate", "where"), MUTATIONS)
def test_fast_path_rejects_what_reference_rejects(
    checker: RecordChecker, mutate: Callable[[dict[str, Any]], None], where: str
) -> None:
    record = copy.deepcopy(VALID)
    mutate(record)
    with pytest.raises(fastjsonschema.JsonSchemaException):
        checker._fast(record)
