"""Tests for reading DICOM series with DICOM SEG label maps, and for metadata privacy."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medground.io.dicom import check_tag_whitelist
from medground.io.volume import VolumeConfig, discover_volume_cases, iter_volume_slices

# Series grid: 6 slices of 16 rows x 12 columns. 16 * 12 bits is a whole number of bytes,
# so the frames of a BINARY SEG can be reordered byte-wise.
SLICES, ROWS, COLUMNS = 6, 16, 12
SLICE_GAP_MM = 2.5

PRIVATE_VALUES = {
    "PatientName": "Doe^Jane",
    "PatientID": "MGR-PRIVACY-4711",
    "PatientBirthDate": "19700412",
    "StudyDate": "20240229",
    "SeriesDate": "20240229",
    "ContentDate": "20240301",
    "InstitutionName": "Saint Example Hospital",
    "InstitutionAddress": "1 Example Road",
    "ReferringPhysicianName": "Who^Doctor",
    "AccessionNumber": "ACC-99812",
}


def ct_slice(study_uid: str, series_uid: str, frame_uid: str, position: int) -> Dataset:
    """One CT instance at slice ``position`` whose pixels hold ``position * 100`` HU."""
    sop_uid = generate_uid()
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = sop_uid
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = frame_uid
    for keyword, value in PRIVATE_VALUES.items():
        setattr(dataset, keyword, value)

    dataset.PatientSex = "F"
    dataset.StudyTime = "101500"
    dataset.StudyID = "S1"
    dataset.Modality = "CT"
    dataset.BodyPartExamined = "ABDOMEN"
    dataset.Manufacturer = "medground-tests"
    dataset.SeriesNumber = 3
    # Instance numbers run against the slice positions, so sorting by them would be wrong.
    dataset.InstanceNumber = SLICES - position
    dataset.PatientPosition = "HFS"
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]

    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.ImagePositionPatient = [-8.0, -6.0, 40.0 + SLICE_GAP_MM * position]
    dataset.PixelSpacing = [0.7, 0.9]
    dataset.SliceThickness = SLICE_GAP_MM
    dataset.Rows, dataset.Columns = ROWS, COLUMNS
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = -1024
    pixels = np.full((ROWS, COLUMNS), 1024 + position * 100, dtype=np.int16)
    dataset.PixelData = pixels.tobytes()
    return dataset


def expected_mask() -> np.ndarray:
    """(slices, rows, columns) segment numbers: liver on slices 1-3, lesion on slice 4."""
    mask = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    mask[1, 2:6, 1:4] = 1
    mask[2, 2:9, 1:6] = 1
    mask[3, 3:5, 2:3] = 1
    mask[4, 10:13, 8:11] = 2
    return mask


def write_series(folder: Path, rng: random.Random) -> list[Dataset]:
    """Write the series under shuffled random file names; return it in position order."""
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = [ct_slice(study_uid, series_uid, frame_uid, k) for k in range(SLICES)]
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{rng.getrandbits(40):010x}.dcm" for _ in datasets]
    order = list(range(SLICES))
    rng.shuffle(order)
    for name, index in zip(names, order, strict=True):
        datasets[index].save_as(folder / name, enforce_file_format=True)
    return datasets


def write_seg(path: Path, source: list[Dataset], mask: np.ndarray, rng: random.Random) -> None:
    """Write a BINARY SEG of ``mask`` over ``source`` with its frames in shuffled order."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in ((1, "liver"), (2, "lesion"))
    ]
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medground-tests",
        manufacturer_model_name="synthetic",
        software_versions="0",
        device_serial_number="0",
    )

    frame_count = int(seg.NumberOfFrames)
    frame_bits = ROWS * COLUMNS
    bits = np.unpackbits(np.frombuffer(seg.PixelData, dtype=np.uint8), bitorder="little")
    frames = bits[: frame_count * frame_bits].reshape(frame_count, frame_bits)
    order = list(range(frame_count))
    while order == sorted(order):
        rng.shuffle(order)
    seg.PixelData = np.packbits(frames[order].ravel(), bitorder="little").tobytes()
    groups = list(seg.PerFrameFunctionalGroupsSequence)
    seg.PerFrameFunctionalGroupsSequence = [groups[index] for index in order]
    seg.save_as(path)


@pytest.fixture
def dicom_case(tmp_path):
    rng = random.Random(20240229)
    series_dir = tmp_path / "study" / "series_ct"
    source = write_series(series_dir, rng)
    seg_path = tmp_path / "study" / "seg" / "liver_seg.dcm"
    seg_path.parent.mkdir(parents=True)
    write_seg(seg_path, source, expected_mask(), rng)
    return series_dir, seg_path


def dicom_config(**fields) -> VolumeConfig:
    fields.setdefault("format", "dicom")
    fields.setdefault("window", {"level": 0, "width": 1020})
    fields.setdefault("strategy", "all_foreground")
    return VolumeConfig(**fields)


def test_series_with_shuffled_seg_end_to_end(dicom_case):
    series_dir, seg_path = dicom_case
    mask = expected_mask()

    slices = list(iter_volume_slices(series_dir, seg_path, dicom_config()))

    assert [item.index for item in slices] == [1, 2, 3, 4]
    for item in slices:
        # Standard axial DICOM rows grow to posterior and columns to the patient's left,
        # which is the display orientation, so labels equal the SEG planes unchanged.
        assert item.labels.shape == (ROWS, COLUMNS)
        assert np.array_equal(item.labels, mask[item.index]), f"slice {item.index}"
        assert item.spacing_mm == (0.7, 0.9)
        assert item.class_names == {1: "liver", 2: "lesion"}
        assert item.source_image == series_dir
        assert item.source_labels == seg_path
    # Slice k contains (k * 100) HU, and the window maps -510..510 HU to 0..255.
    expected_grey = [round((k * 100 + 510) / 1020 * 255) for k in (1, 2, 3, 4)]
    assert [int(item.image[0, 0]) for item in slices] == expected_grey


def test_manifest_labels_override_segment_labels(dicom_case):
    series_dir, seg_path = dicom_case

    item = next(iter_volume_slices(series_dir, seg_path, dicom_config(labels={1: "l", 2: "m"})))

    assert item.class_names == {1: "l", 2: "m"}


def test_coronal_plane_from_dicom(dicom_case):
    series_dir, seg_path = dicom_case

    slices = list(iter_volume_slices(series_dir, seg_path, dicom_config(plane="coronal")))

    assert all(item.labels.shape == (SLICES, COLUMNS) for item in slices)
    # Superior is up: the lesion on the most superior labelled slice (4) is above liver.
    lesion = next(item for item in slices if 2 in item.selected_for)
    assert np.flatnonzero(lesion.labels.any(axis=1)).tolist() == [SLICES - 1 - 4]


def test_seg_with_missing_series_rejected(tmp_path, dicom_case):
    _series_dir, seg_path = dicom_case
    other_series = tmp_path / "other"
    write_series(other_series, random.Random(7))

    with pytest.raises(ValueError, match=r"liver_seg\.dcm: SEG references series .* not in"):
        list(iter_volume_slices(other_series, seg_path, dicom_config()))


def test_seg_with_missing_instances_rejected(dicom_case):
    series_dir, seg_path = dicom_case
    sorted(series_dir.iterdir())[0].unlink()

    with pytest.raises(ValueError, match=r"liver_seg\.dcm: SEG references 1 instances"):
        list(iter_volume_slices(series_dir, seg_path, dicom_config()))


def test_discovery_pairs_seg_with_series(tmp_path, dicom_case):
    series_dir, seg_path = dicom_case
    write_series(tmp_path / "study" / "unlabelled", random.Random(3))

    found = discover_volume_cases(tmp_path / "study", dicom_config())

    assert [case.case_id for case in found.cases] == ["series_ct"]
    assert found.cases[0].image_path == series_dir
    assert found.cases[0].label_path == seg_path
    assert found.unpaired == (tmp_path / "study" / "unlabelled",)


def test_discovery_rejects_orphan_seg(tmp_path, dicom_case):
    series_dir, _seg_path = dicom_case
    for path in series_dir.iterdir():
        path.unlink()

    with pytest.raises(ValueError, match=r"liver_seg\.dcm: SEG references series"):
        discover_volume_cases(tmp_path / "study", dicom_config())


# Privacy


def test_meta_and_logs_hold_no_patient_data(dicom_case, caplog):
    series_dir, seg_path = dicom_case

    with caplog.at_level(logging.DEBUG):
        slices = list(iter_volume_slices(series_dir, seg_path, dicom_config()))

    assert slices
    for item in slices:
        assert set(item.meta) <= set(dicom_config().dicom_tags_whitelist)
        assert item.meta["Modality"] == "CT"
        assert item.meta["BodyPartExamined"] == "ABDOMEN"
        assert item.meta["PixelSpacing"] == [0.7, 0.9]
        rendered_meta = repr(item.meta)
        for keyword, value in PRIVATE_VALUES.items():
            assert value not in rendered_meta, keyword
    for keyword, value in PRIVATE_VALUES.items():
        assert value not in caplog.text, keyword


def test_custom_whitelist_passes_only_listed_tags(dicom_case):
    series_dir, seg_path = dicom_case
    config = dicom_config(dicom_tags_whitelist=("Modality", "SliceThickness"))

    item = next(iter_volume_slices(series_dir, seg_path, config))

    assert item.meta == {"Modality": "CT", "SliceThickness": 2.5}


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        (["PatientSex"], "may identify"),  # patient module, group 0010
        (["StudyTime"], "may identify"),  # TM value representation
        (["FrameOfReferenceUID"], "may identify"),  # UI value representation
        (["ReferencedImageSequence"], "may identify"),  # sequences may nest anything
        (["NotADicomKeyword"], "unknown DICOM keywords"),
    ],
)
def test_whitelist_rejects_identifying_or_unknown(keywords, message):
    with pytest.raises(ValueError, match=message):
        check_tag_whitelist(keywords)
