"""Tests for nnU-Net v2 and MSD dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medground.io.nnunet import read_nnunet_labels
from medground.io.volume import VolumeConfig, discover_volume_cases, iter_volume_slices

SHAPE = (12, 10, 8)
AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])  # LPS, as CT converted from DICOM usually is


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content), encoding="utf-8")


def case_volumes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image in HU and labels: liver (1) on slices 2-5, tumour (2) on slice 4."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40.0, 10.0, size=SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:8, 2:7, 2:6] = 1
    labels[4:6, 3:5, 4] = 2
    return image, labels


@pytest.fixture
def nnunet_root(tmp_path):
    root = tmp_path / "Dataset017_Liver"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": 2,
            "file_ending": ".nii.gz",
        },
    )
    for index, case in enumerate(("liver_001", "liver_002")):
        image, labels = case_volumes(index)
        nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
    # An image without a label map must be reported, not dropped silently.
    image, _labels = case_volumes(9)
    nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / "liver_003_0000.nii.gz")
    return root


def nnunet_config(**fields) -> VolumeConfig:
    fields.setdefault("format", "nnunet")
    fields.setdefault("window", "soft_tissue")
    return VolumeConfig(**fields)


def test_nnunet_v2_discovery(nnunet_root):
    found = discover_volume_cases(nnunet_root, nnunet_config())

    assert [case.case_id for case in found.cases] == ["liver_001", "liver_002"]
    assert found.cases[0].image_path == nnunet_root / "imagesTr" / "liver_001_0000.nii.gz"
    assert found.cases[0].label_path == nnunet_root / "labelsTr" / "liver_001.nii.gz"
    assert found.unpaired == (nnunet_root / "imagesTr" / "liver_003_0000.nii.gz",)


def test_nnunet_v2_end_to_end(nnunet_root):
    found = discover_volume_cases(nnunet_root, nnunet_config())
    case = found.cases[0]
    _image, labels = case_volumes(0)

    slices = list(iter_volume_slices(case.image_path, case.label_path, nnunet_config()))

    # Tumour voxels replace liver voxels on slice 4, so liver is largest on slice 2.
    assert {item.index: item.selected_for for item in slices} == {2: (1,), 4: (2,)}
    item = slices[1]
    assert item.class_names == {1: "liver", 2: "tumour"}
    # LPS voxels: columns already grow toward L and rows toward P, so no flips are needed.
    assert np.array_equal(item.labels, labels[:, :, 4].T)
    assert item.spacing_mm == pytest.approx((0.8, 0.8))


def test_nnunet_manifest_labels_win(nnunet_root):
    case = discover_volume_cases(nnunet_root, nnunet_config()).cases[0]
    config = nnunet_config(labels={1: "hepar", 2: "lesion"})

    item = next(iter_volume_slices(case.image_path, case.label_path, config))

    assert item.class_names == {1: "hepar", 2: "lesion"}


def test_nnunet_region_labels_need_manifest_labels(nnunet_root):
    write_json(
        nnunet_root / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "liver": [1, 2], "tumour": 2},
            "file_ending": ".nii.gz",
        },
    )

    with pytest.raises(ValueError, match=r"dataset\.json: label 'liver' is a region of ids"):
        read_nnunet_labels(nnunet_root / "dataset.json")


def test_nnunet_missing_dataset_json(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.json not found"):
        discover_volume_cases(tmp_path, nnunet_config())


def test_msd_layout_with_4d_images(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_json(
        root / "dataset.json",
        {
            "name": "BRATS",
            "modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "edema", "2": "enhancing tumor"},
            "training": [
                {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
            ],
        },
    )
    flair = np.zeros(SHAPE, dtype=np.float32)
    t1w = np.ones(SHAPE, dtype=np.float32)
    t1w[:, :, :] = np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    _image, labels = case_volumes(0)
    nib.save(
        nib.Nifti1Image(np.stack([flair, t1w], axis=-1), np.eye(4)),
        root / "imagesTr" / "BRATS_001.nii.gz",
    )
    nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "labelsTr" / "BRATS_001.nii.gz")

    (case,) = discover_volume_cases(root, nnunet_config()).cases
    config = nnunet_config(window=None, percentile=(0.0, 100.0), channel=1)
    item = next(iter_volume_slices(case.image_path, case.label_path, config))

    assert case.case_id == "BRATS_001"
    assert item.class_names == {1: "edema", 2: "enhancing tumor"}
    # RAS voxels: the T1w ramp grows toward the patient's right, which is image left.
    assert item.image[0, 0] == 255
    assert item.image[0, -1] == 0
