"""Tests for reading NIfTI and NRRD volumes into oriented 2D slices."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from PIL import Image

from medground.io.volume import (
    VolumeConfig,
    VolumeSlice,
    iter_volume_slices,
    save_slice_png,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BRATS_LABELS = {1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"}

# Voxel grid of the synthetic volumes: (I, J, K) = 20 x 16 x 12 voxels.
SHAPE = (20, 16, 12)


def shared_data_dir() -> Path:
    return Path(os.environ.get("MGR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def brats_cases() -> list[Path]:
    root = shared_data_dir() / "brats2015-deepmedic" / "brats2015TrainingData"
    return sorted(path.parent for path in root.glob("*/*/OTMultiClass.nii.gz"))


requires_brats = pytest.mark.skipif(
    not brats_cases(),
    reason=f"BraTS sample not found under {shared_data_dir()} (set MGR_SHARED_DATA to the "
    "folder holding brats2015-deepmedic/)",
)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def config(**fields) -> VolumeConfig:
    fields.setdefault("format", "nifti")
    fields.setdefault("labels", {1: "blob", 2: "marker"})
    fields.setdefault("percentile", (0.0, 100.0))
    return VolumeConfig(**fields)


def only_slice(slices: list[VolumeSlice], index: int) -> VolumeSlice:
    matches = [item for item in slices if item.index == index]
    assert len(matches) == 1, [item.index for item in slices]
    return matches[0]


def ramp_image() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


# Each row: affine, voxel index range along I that lies in the patient's left half.
# RAS+: I grows toward the patient's right, so the left half has the low I indices.
# LAS+: I grows toward the patient's left, so the left half has the high I indices.
SIDE_CASES = {
    "RAS": (np.diag([1.0, 1.0, 1.0, 1.0]), slice(2, 6)),
    "LAS": (np.diag([-1.0, 1.0, 1.0, 1.0]), slice(14, 18)),
    "LPS_2mm": (np.diag([-2.0, -2.0, 3.0, 1.0]), slice(14, 18)),
}


@pytest.mark.parametrize("case", sorted(SIDE_CASES))
def test_patient_left_blob_lands_on_image_right(tmp_path, case):
    affine, left_half = SIDE_CASES[case]
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[left_half, 6:10, 5] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    slices = list(iter_volume_slices(image_path, label_path, config()))

    assert len(slices) == 1
    item = slices[0]
    assert item.plane == "axial"
    assert item.index == 5
    assert item.index_axis == 2
    assert item.patient_left_on == "image_right"
    assert item.axis_codes == ("P", "L")
    columns = np.flatnonzero(item.labels.any(axis=0))
    width = item.labels.shape[1]
    assert columns.min() >= width // 2, f"blob columns {columns.tolist()} of width {width}"


@pytest.mark.parametrize("case", sorted(SIDE_CASES))
def test_anterior_blob_lands_on_top(tmp_path, case):
    affine, _left_half = SIDE_CASES[case]
    # J grows toward anterior when the affine's second diagonal entry is positive.
    anterior = slice(12, 15) if affine[1, 1] > 0 else slice(1, 4)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[8:12, anterior, 5] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    (item,) = iter_volume_slices(image_path, label_path, config())

    rows = np.flatnonzero(item.labels.any(axis=1))
    assert rows.max() < item.labels.shape[0] // 2, f"blob rows {rows.tolist()}"


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_superior_is_up_in_coronal_and_sagittal(tmp_path, plane):
    # K grows toward inferior here, so the top of the displayed image must be K = 0.
    affine = np.diag([1.0, 1.0, -1.0, 1.0])
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[8:12, 6:10, 0:2] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    slices = list(iter_volume_slices(image_path, label_path, config(plane=plane)))

    item = slices[0]
    assert item.plane == plane
    height = item.labels.shape[0]
    assert height == SHAPE[2]
    rows = np.flatnonzero(item.labels.any(axis=1))
    assert rows.tolist() == [0, 1]
    expected_codes = ("I", "L") if plane == "coronal" else ("I", "P")
    assert item.axis_codes == expected_codes


def test_sagittal_shows_anterior_on_image_left(tmp_path):
    affine = np.eye(4)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[10, 13:16, 4:8] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    (item,) = iter_volume_slices(image_path, label_path, config(plane="sagittal"))

    columns = np.flatnonzero(item.labels.any(axis=0))
    assert columns.max() < item.labels.shape[1] // 2
    assert item.patient_left_on is None


def test_slice_index_maps_to_flipped_source_axis(tmp_path):
    # K grows toward inferior, so canonical slice k is source slice K - 1 - k.
    affine = np.diag([1.0, 1.0, -1.0, 1.0])
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:8, 4:8, 3] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    (item,) = iter_volume_slices(image_path, label_path, config())

    assert item.index == 3
    assert item.index_axis == 2


def test_spacing_follows_plane(tmp_path):
    affine = np.diag([0.5, 0.75, 3.0, 1.0])
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:8, 4:8, 3:6] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    axial = next(iter_volume_slices(image_path, label_path, config()))
    coronal = next(iter_volume_slices(image_path, label_path, config(plane="coronal")))

    assert axial.spacing_mm == (0.75, 0.5)
    assert coronal.spacing_mm == (3.0, 0.5)


def strategy_volume(tmp_path: Path) -> tuple[Path, Path]:
    """Label 1 on slices 2..6 with its largest area on slice 4; label 2 only on slice 9."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for k, size in zip(range(2, 7), (2, 3, 5, 3, 2), strict=True):
        labels[2 : 2 + size, 2 : 2 + size, k] = 1
    labels[15, 12, 9] = 2
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))
    return image_path, label_path


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"strategy": "largest_per_label"}, {4: (1,), 9: (2,)}),
        ({"strategy": "all_foreground"}, {2: (1,), 3: (1,), 4: (1,), 5: (1,), 6: (1,), 9: (2,)}),
        ({"strategy": "every_kth", "k": 3}, {3: (1,), 6: (1,), 9: (2,)}),
        # the 1-pixel label 2 and the 2x2 squares fall below 5 mm²
        ({"strategy": "all_foreground", "min_object_mm2": 5.0}, {3: (1,), 4: (1,), 5: (1,)}),
    ],
)
def test_strategy_choice(tmp_path, fields, expected):
    image_path, label_path = strategy_volume(tmp_path)

    slices = list(iter_volume_slices(image_path, label_path, config(**fields)))

    assert {item.index: item.selected_for for item in slices} == expected


def test_every_kth_counts_source_indices(tmp_path):
    # K grows toward inferior, so source index k is canonical index K - 1 - k.
    affine = np.diag([1.0, 1.0, -1.0, 1.0])
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:8, 4:8, 2:8] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), affine)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, affine)

    slices = list(iter_volume_slices(image_path, label_path, config(strategy="every_kth", k=3)))

    assert [item.index for item in slices] == [3, 6]


def test_min_object_counts_components_not_totals(tmp_path):
    # Two 1-voxel objects of label 1 on one slice: 2 mm² in total, but 1 mm² per object.
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2, 2, 4] = 1
    labels[10, 10, 4] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))

    slices = list(iter_volume_slices(image_path, label_path, config(min_object_mm2=2.0)))

    assert slices == []


def test_percentile_and_window_scaling(tmp_path):
    image = np.full(SHAPE, -1000.0, dtype=np.float32)
    image[10:, :, :] = 40.0
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:8, 4:8, 5] = 1
    image_path = save_nifti(tmp_path / "image.nii.gz", image, np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))

    (windowed,) = iter_volume_slices(
        image_path, label_path, config(percentile=None, window="brain")
    )

    assert windowed.image.dtype == np.uint8
    assert windowed.image.shape == (SHAPE[1], SHAPE[0])
    # Brain window (level 40, width 80): 40 HU is mid-grey and -1000 HU is black.
    assert set(np.unique(windowed.image).tolist()) == {0, 128}


def test_float_image_without_scaling_rejected(tmp_path):
    image_path, label_path = strategy_volume(tmp_path)

    with pytest.raises(ValueError, match=r"image\.nii\.gz.*set volume\.window"):
        list(iter_volume_slices(image_path, label_path, config(percentile=None)))


def test_float_labels_rounded_within_tolerance(tmp_path):
    labels = np.zeros(SHAPE, dtype=np.float32)
    labels[4:8, 4:8, 5] = 0.99999997
    labels[10:12, 10:12, 5] = 2.0004
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))

    (item,) = iter_volume_slices(image_path, label_path, config(strategy="all_foreground"))

    assert item.labels.dtype == np.int32
    assert np.count_nonzero(item.labels == 1) == 16
    assert np.count_nonzero(item.labels == 2) == 4


# Bad inputs: each error names the offending file and value.


def test_shape_mismatch_rejected(tmp_path):
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    labels = np.zeros((20, 16, 11), dtype=np.uint8)
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))

    with pytest.raises(
        ValueError, match=r"image\.nii\.gz has shape \(20, 16, 12\).*\(20, 16, 11\)"
    ):
        list(iter_volume_slices(image_path, label_path, config()))


def test_nan_image_rejected(tmp_path):
    image = ramp_image()
    image[3, 4, 5] = np.nan
    image_path = save_nifti(tmp_path / "image.nii.gz", image, np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", np.zeros(SHAPE, np.uint8), np.eye(4))

    with pytest.raises(ValueError, match=r"image\.nii\.gz: image has 1 NaN"):
        list(iter_volume_slices(image_path, label_path, config()))


def test_singular_affine_rejected(tmp_path):
    singular = np.eye(4)
    singular[2, 2] = 0.0
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.float32)
    header["sform_code"] = 1
    header["qform_code"] = 0
    header["srow_x"], header["srow_y"], header["srow_z"] = singular[:3]
    image_path = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(ramp_image(), None, header=header), image_path)
    label_path = save_nifti(tmp_path / "labels.nii.gz", np.zeros(SHAPE, np.uint8), np.eye(4))

    with pytest.raises(ValueError, match=r"image\.nii\.gz: affine is not invertible"):
        list(iter_volume_slices(image_path, label_path, config()))


def test_label_value_between_ids_rejected(tmp_path):
    labels = np.zeros(SHAPE, dtype=np.float32)
    labels[4, 5, 6] = 1.5
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))

    with pytest.raises(ValueError, match=r"labels\.nii\.gz: label value 1\.5 at voxel \(4, 5, 6\)"):
        list(iter_volume_slices(image_path, label_path, config()))


def test_undeclared_label_id_rejected(tmp_path):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4, 5, 6] = 7
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4))

    with pytest.raises(ValueError, match=r"labels\.nii\.gz: label values \[7\] match no declared"):
        list(iter_volume_slices(image_path, label_path, config()))


def test_label_orientation_mismatch_rejected(tmp_path):
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(
        tmp_path / "labels.nii.gz", np.zeros(SHAPE, np.uint8), np.diag([-1.0, 1, 1, 1])
    )

    with pytest.raises(ValueError, match="different orientations"):
        list(iter_volume_slices(image_path, label_path, config()))


def test_empty_label_map_warns(tmp_path, caplog):
    image_path = save_nifti(tmp_path / "image.nii.gz", ramp_image(), np.eye(4))
    label_path = save_nifti(tmp_path / "labels.nii.gz", np.zeros(SHAPE, np.uint8), np.eye(4))

    with caplog.at_level(logging.WARNING):
        slices = list(iter_volume_slices(image_path, label_path, config()))

    assert slices == []
    assert "yields no slices" in caplog.text


# NRRD


@pytest.mark.parametrize(
    ("space", "left_half"),
    [
        # LPS: the first axis grows toward the patient's left.
        ("left-posterior-superior", slice(14, 18)),
        ("right-anterior-superior", slice(2, 6)),
    ],
)
def test_nrrd_pair_end_to_end(tmp_path, space, left_half):
    header = {
        "space": space,
        "space directions": np.diag([0.8, 0.8, 2.0]),
        "space origin": np.array([10.0, -5.0, 3.0]),
    }
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[left_half, 6:10, 7] = 2
    image_path = tmp_path / "image.nrrd"
    label_path = tmp_path / "labels.seg.nrrd"
    nrrd.write(str(image_path), ramp_image(), header)
    nrrd.write(str(label_path), labels, header)

    (item,) = iter_volume_slices(image_path, label_path, config(format="nrrd"))

    assert item.index == 7
    assert item.spacing_mm == (0.8, 0.8)
    assert item.selected_for == (2,)
    assert np.count_nonzero(item.labels == 2) == 16
    columns = np.flatnonzero(item.labels.any(axis=0))
    assert columns.min() >= item.labels.shape[1] // 2


def test_nrrd_vector_axis_selects_channel(tmp_path):
    channels = np.stack([ramp_image(), -ramp_image()])  # (2, I, J, K), channel first
    nan_row = [np.nan, np.nan, np.nan]
    image_header = {
        "space": "left-posterior-superior",
        "space directions": [nan_row, [1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "kinds": ["vector", "domain", "domain", "domain"],
    }
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:8, 4:8, 5] = 1
    image_path = tmp_path / "image.nrrd"
    label_path = tmp_path / "labels.nrrd"
    nrrd.write(str(image_path), channels, image_header)
    nrrd.write(str(label_path), labels, {"space": "LPS", "space directions": np.eye(3)})

    first = next(iter_volume_slices(image_path, label_path, config(format="nrrd")))
    second = next(iter_volume_slices(image_path, label_path, config(format="nrrd", channel=1)))

    # Channel 1 is the negated ramp, so its display is the mirror of channel 0's.
    assert np.array_equal(second.image.astype(int), 255 - first.image.astype(int))


def test_nrrd_without_space_rejected(tmp_path):
    image_path = tmp_path / "image.nrrd"
    label_path = tmp_path / "labels.nrrd"
    nrrd.write(str(image_path), ramp_image())
    nrrd.write(
        str(label_path), np.zeros(SHAPE, np.uint8), {"space": "RAS", "space directions": np.eye(3)}
    )

    with pytest.raises(ValueError, match=r"image\.nrrd: NRRD space None"):
        list(iter_volume_slices(image_path, label_path, config(format="nrrd")))


# PNG output


def test_save_slice_png_round_trip(tmp_path):
    image = (np.arange(12 * 20) % 256).astype(np.uint8).reshape(12, 20)

    path = save_slice_png(image, tmp_path / "out" / "slice.png")

    with Image.open(path) as saved:
        assert saved.mode == "L"
        assert saved.size == (20, 12)
        assert np.array_equal(np.asarray(saved), image)
    assert [p.name for p in path.parent.iterdir()] == ["slice.png"]


def test_save_slice_png_rejects_float(tmp_path):
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(H, W, 3\) uint8"):
        save_slice_png(np.zeros((4, 4), np.float32), tmp_path / "x.png")


# Real BraTS cases


def independent_axial_labels(label_path: Path, index: int) -> np.ndarray:
    """Cut axial slice ``index`` with plain nibabel: rows grow to P, columns to L."""
    image = nib.load(label_path)
    codes = nib.aff2axcodes(image.affine)
    assert codes[0] in "LR", codes
    assert codes[1] in "AP", codes
    assert codes[2] in "SI", codes
    data = np.rint(np.asarray(image.dataobj, dtype=np.float64)).astype(np.int32)
    section = data[:, :, index]
    if codes[0] == "R":
        section = section[::-1, :]
    if codes[1] == "A":
        section = section[:, ::-1]
    return section.T


@requires_brats
@pytest.mark.shared_data
@pytest.mark.parametrize("case_dir", brats_cases(), ids=lambda path: path.name)
def test_brats_largest_axial_slice_per_label(case_dir):
    label_path = case_dir / "OTMultiClass.nii.gz"
    brats_config = VolumeConfig(
        format="nifti", labels=BRATS_LABELS, percentile=(0.5, 99.5), percentile_of="nonzero"
    )

    slices = list(
        iter_volume_slices(case_dir / "Flair_subtrMeanDivStd.nii.gz", label_path, brats_config)
    )

    chosen = {label: item for item in slices for label in item.selected_for}
    assert sorted(chosen) == [1, 2, 3, 4]

    data = np.rint(np.asarray(nib.load(label_path).dataobj)).astype(np.int32)
    for label, item in chosen.items():
        areas = (data == label).sum(axis=(0, 1))
        assert item.index == int(np.argmax(areas)), f"label {label}"
        assert item.index_axis == 2
        assert item.image.shape == item.labels.shape == (240, 240)
        assert item.image.dtype == np.uint8
        assert item.labels.dtype == np.int32
        assert item.spacing_mm == (1.0, 1.0)
        assert np.array_equal(item.labels, independent_axial_labels(label_path, item.index))
