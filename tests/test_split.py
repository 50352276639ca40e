"""Tests for medground.split: config validation and group-aware, order-free assignment."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from medground.split import (
    FieldGroupKey,
    RegexGroupKey,
    SplitConfig,
    SplitRatios,
    assign_splits,
    group_ids,
    split_for_group,
)


def patient_records(patients: int = 120, per_patient: int = 3) -> list[dict[str, Any]]:
    """Records whose source.image starts with the patient folder."""
    return [
        {
            "id": f"ds/p{patient:03d}/s{index}/t0/q0",
            "dataset": "ds",
            "source": {"image": f"p{patient:03d}/scan_{index}.png"},
            "patient_id": f"p{patient:03d}",
        }
        for patient in range(patients)
        for index in range(per_patient)
    ]


REGEX_CONFIG = SplitConfig(
    ratios=SplitRatios(train=0.6, val=0.2, test=0.2),
    seed=7,
    group_key=RegexGroupKey(regex=r"^(?P<group>p\d+)/"),
)


def splits_by_id(records: list[dict[str, Any]]) -> dict[str, str]:
    return {record["id"]: record["split"] for record in records}


def test_no_group_crosses_splits() -> None:
    assigned = assign_splits(patient_records(), REGEX_CONFIG)
    splits_of_patient: dict[str, set[str]] = defaultdict(set)
    for record in assigned:
        splits_of_patient[record["patient_id"]].add(record["split"])
    assert all(len(splits) == 1 for splits in splits_of_patient.values())
    assert {record["split"] for record in assigned} == {"train", "val", "test"}


def test_assignment_ignores_record_order() -> None:
    records = patient_records()
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert splits_by_id(assign_splits(records, REGEX_CONFIG)) == splits_by_id(
        assign_splits(shuffled, REGEX_CONFIG)
    )


def test_assignment_ignores_other_records() -> None:
    records = patient_records()
    subset = records[::7]
    full = splits_by_id(assign_splits(records, REGEX_CONFIG))
    partial = splits_by_id(assign_splits(subset, REGEX_CONFIG))
    assert all(full[record_id] == split for record_id, split in partial.items())


def test_realised_fractions_near_ratios() -> None:
    assigned = assign_splits(patient_records(patients=1000, per_patient=1), REGEX_CONFIG)
    counts = {name: sum(r["split"] == name for r in assigned) for name in ("train", "val", "test")}
    assert 540 <= counts["train"] <= 660
    assert 150 <= counts["val"] <= 250
    assert 150 <= counts["test"] <= 250


def test_seed_changes_assignment() -> None:
    records = patient_records()
    other = REGEX_CONFIG.model_copy(update={"seed": 8})
    assert splits_by_id(assign_splits(records, REGEX_CONFIG)) != splits_by_id(
        assign_splits(records, other)
    )


def test_held_out_sends_everything_to_test() -> None:
    config = SplitConfig(held_out=True)
    assert {record["split"] for record in assign_splits(patient_records(), config)} == {"test"}


def test_dataframe_matches_list_input() -> None:
    records = patient_records()
    frame = pl.DataFrame(records)
    assigned_frame = assign_splits(frame, REGEX_CONFIG)
    assert isinstance(assigned_frame, pl.DataFrame)
    assert dict(zip(assigned_frame["id"], assigned_frame["split"], strict=True)) == splits_by_id(
        assign_splits(records, REGEX_CONFIG)
    )


def test_input_list_is_not_modified() -> None:
    records = patient_records(patients=2)
    assign_splits(records, REGEX_CONFIG)
    assert all("split" not in record for record in records)


@pytest.mark.parametrize(
    "case,group_key,expected",
    [
        ("named group", RegexGroupKey(regex=r"^(?P<group>p\d+)/scan_(\d)"), "p001"),
        ("first group", RegexGroupKey(regex=r"scan_(\d)"), "0"),
        ("field value", FieldGroupKey(field="patient_id"), "p001"),
        ("other field with regex", RegexGroupKey(regex=r"/(p\d+)/", field="id"), "p001"),
    ],
)
def test_group_ids_cases(case: str, group_key: Any, expected: str) -> None:
    record = patient_records(patients=2, per_patient=1)[1]
    assert group_ids([record], SplitConfig(group_key=group_key)) == [expected]


def test_split_for_group_is_stable() -> None:
    ratios = SplitRatios(train=0.5, val=0.25, test=0.25)
    assert split_for_group("p001", ratios, 1) == split_for_group("p001", ratios, 1)
    assert split_for_group("x", SplitRatios(train=1.0, val=0.0, test=0.0), 5) == "train"
    assert split_for_group("x", SplitRatios(train=0.0, val=0.0, test=1.0), 5) == "test"


@pytest.mark.parametrize(
    "case,data,message",
    [
        (
            "ratios not summing to one",
            {"ratios": {"train": 0.8, "val": 0.1, "test": 0.2}},
            "sum to 1",
        ),
        (
            "negative ratio",
            {"ratios": {"train": 1.2, "val": -0.1, "test": -0.1}},
            "greater than or equal to 0",
        ),
        ("unknown key", {"ratio": {"train": 1.0, "val": 0.0, "test": 0.0}}, "Extra inputs"),
        ("regex without group", {"group_key": {"regex": "p\\d+"}}, "no capture group"),
        ("regex does not compile", {"group_key": {"regex": "(p"}}, "does not compile"),
        ("unknown group_key key", {"group_key": {"column": "x"}}, "group_key"),
    ],
)
def test_config_rejects(case: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SplitConfig.model_validate(data)


def test_regex_without_match_names_record() -> None:
    config = SplitConfig(group_key=RegexGroupKey(regex=r"^(case\d+)/"))
    with pytest.raises(ValueError, match=r"does not match source.image = 'p000/scan_0.png'"):
        assign_splits(patient_records(patients=1, per_patient=1), config)


def test_missing_field_names_record_and_key() -> None:
    config = SplitConfig(group_key=FieldGroupKey(field="source.patient"))
    with pytest.raises(KeyError, match="has no field 'source.patient'"):
        assign_splits(patient_records(patients=1, per_patient=1), config)
