"""Tests for the ``volume:`` manifest models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medground.config.volume import (
    CT_WINDOW_PRESETS,
    DEFAULT_DICOM_TAGS,
    VolumeConfig,
    identifying_dicom_keywords,
)

LABELS = {1: "tumour"}


def test_minimal_nifti_config_defaults():
    config = VolumeConfig(format="nifti", labels=LABELS, percentile=(0.5, 99.5))
    assert config.plane == "axial"
    assert config.strategy == "largest_per_label"
    assert config.dicom_tags_whitelist == DEFAULT_DICOM_TAGS
    assert config.window_level_width() is None


@pytest.mark.parametrize("preset", sorted(CT_WINDOW_PRESETS))
def test_window_preset_resolves(preset):
    config = VolumeConfig(format="nifti", labels=LABELS, window=preset)
    assert config.window_level_width() == CT_WINDOW_PRESETS[preset]


def test_explicit_window_resolves():
    config = VolumeConfig(format="nifti", labels=LABELS, window={"level": 30, "width": 90})
    assert config.window_level_width() == (30.0, 90.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # every_kth without its step
        ({"format": "nifti", "labels": LABELS, "strategy": "every_kth"}, "needs 'k'"),
        # a step for a strategy that has none
        ({"format": "nifti", "labels": LABELS, "k": 3}, "applies only to strategy"),
        # CT window and MRI percentiles together
        (
            {"format": "nifti", "labels": LABELS, "window": "lung", "percentile": (1, 99)},
            "not both",
        ),
        # percentiles in the wrong order
        ({"format": "nifti", "labels": LABELS, "percentile": (99, 1)}, "invalid percentile"),
        # unknown preset name
        ({"format": "nifti", "labels": LABELS, "window": "liver"}, "window"),
        # zero window width
        ({"format": "nifti", "labels": LABELS, "window": {"level": 0, "width": 0}}, "width"),
        # background listed as a class
        ({"format": "nifti", "labels": {0: "background", 1: "a"}}, "id 0 is background"),
        # stacks have no plane
        ({"format": "npz", "labels": LABELS, "plane": "coronal"}, "'plane' does not apply"),
        # npz keys on another format
        ({"format": "nifti", "labels": LABELS, "npz": {"split": "val"}}, "applies only to"),
        # identifying DICOM attribute in the whitelist
        (
            {"format": "dicom", "dicom_tags_whitelist": ["Modality", "PatientName"]},
            "identifying",
        ),
        # unknown key
        ({"format": "nifti", "labels": LABELS, "planes": "axial"}, "Extra inputs"),
        # tolerance that would merge neighbouring ids
        ({"format": "nifti", "labels": LABELS, "label_tolerance": 0.5}, "label_tolerance"),
    ],
)
def test_invalid_config_rejected(fields, message):
    with pytest.raises(ValidationError, match=message):
        VolumeConfig(**fields)


@pytest.mark.parametrize(
    ("keyword", "identifying"),
    [
        ("PatientName", True),
        ("PatientID", True),
        ("PatientBirthDate", True),
        ("StudyDate", True),
        ("AcquisitionDateTime", True),
        ("InstitutionName", True),
        ("ReferringPhysicianName", True),
        ("AccessionNumber", True),
        ("StudyInstanceUID", True),
        ("StationName", True),
        ("Modality", False),
        ("BodyPartExamined", False),
        ("PixelSpacing", False),
        ("ImageOrientationPatient", False),
        ("PatientPosition", False),
        ("RepetitionTime", False),
        ("SeriesNumber", False),
    ],
)
def test_identifying_keyword_table(keyword, identifying):
    assert (identifying_dicom_keywords([keyword]) == [keyword]) is identifying


def test_npz_keys_follow_split_and_category():
    config = VolumeConfig(format="npz", labels=LABELS, npz={"split": "val", "category": "C1"})
    assert config.npz.resolved_keys() == ("val_images_C1", "val_label_C1")


def test_npz_explicit_keys_override():
    config = VolumeConfig(format="npz", labels=LABELS, npz={"images_key": "x", "labels_key": "y"})
    assert config.npz.resolved_keys() == ("x", "y")
