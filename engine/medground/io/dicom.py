"""Read a DICOM image series and its DICOM SEG into voxel arrays with RAS+ affines.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient direction cosines), never by file name or
InstanceNumber. The SEG is matched to its source series through the SeriesInstanceUID
and SOPInstanceUIDs it references, and highdicom places its frames by source instance,
so SEG frames may be stored in any order.

Only whitelisted attributes reach ``VolumeSlice.meta``, and no attribute value is logged.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import highdicom as hd
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.errors import InvalidDicomError
    from pydicom.multival import MultiValue
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "reading DICOM needs pydicom and highdicom; install them with "
        "'pip install medground[dicom]'"
    ) from exc

from medground.config.volume import VolumeConfig, identifying_dicom_keywords
from medground.io.orientation import VoxelData
from medground.io.slicing import VolumeCase, VolumeDiscovery

logger = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"

# Value representations that carry names, dates, times or identifiers.
_IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM", "UI", "SQ"})
_PATIENT_GROUP = 0x0010

# Relative spread of slice gaps accepted as one uniform spacing.
_SLICE_GAP_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class _Header:
    """Header of one DICOM file, read without pixel data."""

    path: Path
    dataset: pydicom.Dataset

    @property
    def series_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def is_seg(self) -> bool:
        return str(self.dataset.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID


def check_tag_whitelist(keywords: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError for unknown keywords and for attributes that may identify a patient.

    Rejected are the patient module (group 0010), person names, dates, times, UIDs,
    sequences, and the keyword patterns of :func:`identifying_dicom_keywords`.
    """
    unknown = [keyword for keyword in keywords if tag_for_keyword(keyword) is None]
    if unknown:
        raise ValueError(
            f"dicom_tags_whitelist has unknown DICOM keywords {unknown}; use keywords "
            "from the DICOM data dictionary, e.g. 'Modality', 'PixelSpacing'"
        )
    identifying = [
        keyword
        for keyword in keywords
        if dictionary_VR(keyword) in _IDENTIFYING_VRS
        or (tag_for_keyword(keyword) or 0) >> 16 == _PATIENT_GROUP
    ]
    identifying += identifying_dicom_keywords(
        [keyword for keyword in keywords if keyword not in identifying]
    )
    if identifying:
        raise ValueError(
            f"dicom_tags_whitelist names attributes that may identify a patient "
            f"{identifying}; remove them"
        )


def read_dicom_pair(
    series_dir: Path, seg_path: Path, config: VolumeConfig
) -> tuple[VoxelData, VoxelData, dict[int, str], dict[str, Any]]:
    """Read the series a SEG refers to and the SEG's segments as one label map.

    Args:
        series_dir: Folder holding the source series (other series and SEG files in it
            are ignored).
        seg_path: DICOM SEG file whose referenced series must be in ``series_dir``.
        config: Supplies ``dicom_tags_whitelist``.

    Returns:
        Image voxels (columns, rows, slices) in modality units (RescaleSlope and
        RescaleIntercept applied), label voxels of the same shape holding segment
        numbers, segment number to segment label, and the whitelisted attributes.
    """
    check_tag_whitelist(config.dicom_tags_whitelist)
    seg = _read_seg(seg_path)
    headers = _sorted_series_headers(series_dir, seg, seg_path)

    image, affine = _read_series_voxels(headers, series_dir)
    source_uids = [str(header.dataset.SOPInstanceUID) for header in headers]
    try:
        # (slices, rows, columns) of segment numbers, one plane per source instance.
        segments = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source_uids, combine_segments=True, relabel=False
        )
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{seg_path}: cannot place the SEG frames on series {series_dir} ({exc}); "
            "check that the SEG was made from this series and that its segments do not "
            "overlap"
        ) from exc
    labels = np.transpose(np.asarray(segments, dtype=np.int32), (2, 1, 0))

    class_names = {
        int(number): str(seg.get_segment_description(number).segment_label)
        for number in seg.get_segment_numbers()
    }
    meta = _whitelisted_meta(headers[0].dataset, config.dicom_tags_whitelist)
    logger.debug(
        "%s: %d slices paired with %s (%d segments)",
        series_dir,
        len(headers),
        seg_path,
        len(class_names),
    )
    return (
        VoxelData(array=image, affine=affine, path=series_dir),
        VoxelData(array=labels, affine=affine, path=seg_path),
        class_names,
        meta,
    )


def _read_seg(seg_path: Path) -> hd.seg.Segmentation:
    try:
        return hd.seg.segread(seg_path)
    except (InvalidDicomError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{seg_path}: not a readable DICOM SEG ({exc}); pass the SEG file as the label path"
        ) from exc


def _scan_headers(folder: Path) -> list[_Header]:
    """Read the headers of every DICOM file under ``folder``; other files are counted."""
    headers: list[_Header] = []
    skipped = 0
    for path in sorted(candidate for candidate in folder.rglob("*") if candidate.is_file()):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped += 1
            continue
        if "SeriesInstanceUID" not in dataset:
            skipped += 1
            continue
        headers.append(_Header(path=path, dataset=dataset))
    if skipped:
        logger.warning("%s: skipped %d files that are not DICOM instances", folder, skipped)
    return headers


def _sorted_series_headers(
    series_dir: Path, seg: hd.seg.Segmentation, seg_path: Path
) -> list[_Header]:
    """Find the SEG's source series in ``series_dir`` and sort it along the slice normal."""
    if not series_dir.is_dir():
        raise ValueError(f"DICOM series folder {series_dir} does not exist or is not a folder")

    referenced = seg.get_source_image_uids()
    referenced_series = sorted({str(series_uid) for _study, series_uid, _sop in referenced})
    if len(referenced_series) != 1:
        raise ValueError(
            f"{seg_path}: SEG references {len(referenced_series)} series "
            f"{referenced_series}; only SEGs made from one series are supported"
        )

    by_series: dict[str, list[_Header]] = defaultdict(list)
    for header in _scan_headers(series_dir):
        if not header.is_seg:
            by_series[header.series_uid].append(header)
    headers = by_series.get(referenced_series[0])
    if not headers:
        raise ValueError(
            f"{seg_path}: SEG references series {referenced_series[0]}, which is not in "
            f"{series_dir} (series found there: {sorted(by_series) or 'none'}); put the "
            "source series next to the SEG or pair the SEG with the right folder"
        )

    present = {str(header.dataset.SOPInstanceUID) for header in headers}
    missing = sorted({str(sop) for _study, _series, sop in referenced} - present)
    if missing:
        raise ValueError(
            f"{seg_path}: SEG references {len(missing)} instances of series "
            f"{referenced_series[0]} that are missing from {series_dir} (first: "
            f"{missing[0]}); restore the complete series"
        )
    return _sort_along_normal(headers, series_dir)


def _sort_along_normal(headers: list[_Header], series_dir: Path) -> list[_Header]:
    """Sort single-frame instances by position along the slice normal and check geometry."""
    first = headers[0].dataset
    for header in headers:
        dataset = header.dataset
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(
                f"{header.path}: multi-frame image instances are not supported; convert "
                "the series to single-frame instances"
            )
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if keyword not in dataset:
                raise ValueError(
                    f"{header.path}: missing {keyword}, so the slice cannot be placed in "
                    "the patient; the series cannot be read as a volume"
                )
        same_orientation = np.allclose(
            np.asarray(dataset.ImageOrientationPatient, dtype=float),
            np.asarray(first.ImageOrientationPatient, dtype=float),
            atol=_ORIENTATION_TOLERANCE,
        )
        same_grid = (
            dataset.Rows == first.Rows
            and dataset.Columns == first.Columns
            and np.allclose(
                np.asarray(dataset.PixelSpacing, dtype=float),
                np.asarray(first.PixelSpacing, dtype=float),
            )
        )
        if not (same_orientation and same_grid):
            raise ValueError(
                f"{header.path}: orientation, size or pixel spacing differs from "
                f"{headers[0].path}; a series read as one volume needs one grid"
            )

    normal = _slice_normal(first)
    positions = np.array(
        [np.dot(normal, np.asarray(h.dataset.ImagePositionPatient, dtype=float)) for h in headers]
    )
    order = np.argsort(positions, kind="stable")
    sorted_positions = positions[order]

    gaps = np.diff(sorted_positions)
    if gaps.size:
        if np.min(gaps) <= _ORIENTATION_TOLERANCE:
            duplicate = headers[int(order[int(np.argmin(gaps)) + 1])].path
            raise ValueError(
                f"{duplicate}: two instances of the series in {series_dir} share the "
                f"position {sorted_positions[int(np.argmin(gaps))]:.3f} mm along the slice "
                "normal; remove duplicates"
            )
        median_gap = float(np.median(gaps))
        if np.max(np.abs(gaps - median_gap)) > _SLICE_GAP_TOLERANCE * median_gap + 1e-3:
            raise ValueError(
                f"{series_dir}: slice gaps vary from {np.min(gaps):.3f} to {np.max(gaps):.3f} "
                "mm (missing slices or variable spacing); a volume needs uniform spacing"
            )
    return [headers[int(index)] for index in order]


def _slice_normal(dataset: pydicom.Dataset) -> np.ndarray:
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def _read_series_voxels(headers: list[_Header], series_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read pixel data of sorted instances into (columns, rows, slices) float32 with its affine.

    The affine maps (column, row, slice) indices to RAS+ mm: DICOM patient coordinates
    are LPS+, so the first two world axes change sign.
    """
    first = headers[0].dataset
    rows, columns = int(first.Rows), int(first.Columns)
    volume = np.empty((columns, rows, len(headers)), dtype=np.float32)
    for slice_index, header in enumerate(headers):
        dataset = pydicom.dcmread(header.path)
        slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
        pixels = dataset.pixel_array.astype(np.float32) * slope + intercept
        volume[:, :, slice_index] = pixels.T

    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(value) for value in first.PixelSpacing)
    first_position = np.asarray(first.ImagePositionPatient, dtype=float)
    if len(headers) > 1:
        last_position = np.asarray(headers[-1].dataset.ImagePositionPatient, dtype=float)
        slice_step = (last_position - first_position) / (len(headers) - 1)
    else:
        thickness = float(first.get("SliceThickness", 0) or 0)
        if thickness <= 0:
            logger.warning(
                "%s: single-slice series without SliceThickness; assuming 1 mm along the "
                "slice normal",
                series_dir,
            )
            thickness = 1.0
        slice_step = _slice_normal(first) * thickness

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = orientation[:3] * column_spacing
    affine_lps[:3, 1] = orientation[3:] * row_spacing
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = first_position
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    return volume, affine_ras


def _whitelisted_meta(dataset: pydicom.Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for keyword in keywords:
        if keyword not in dataset:
            continue
        element = dataset.data_element(keyword)
        if element is not None:
            meta[keyword] = _json_value(element.value)
    return meta


def _json_value(value: Any) -> Any:
    if isinstance(value, (MultiValue, list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def discover_dicom_cases(root: Path) -> VolumeDiscovery:
    """Pair every DICOM SEG under ``root`` with the folder of its source series.

    Args:
        root: Folder tree of DICOM files; series and SEGs may share folders.

    Returns:
        One case per SEG (case id: the series folder relative to ``root``, plus the SEG
        file stem when a series has several SEGs) and, as unpaired, the folders of image
        series that no SEG references.
    """
    headers = _scan_headers(root)
    series_folders: dict[str, set[Path]] = defaultdict(set)
    seg_headers: list[_Header] = []
    for header in headers:
        if header.is_seg:
            seg_headers.append(header)
        else:
            series_folders[header.series_uid].add(header.path.parent)

    cases: list[VolumeCase] = []
    referenced: set[str] = set()
    for seg_header in seg_headers:
        series_uid = _referenced_series_uid(seg_header)
        folders = series_folders.get(series_uid)
        if not folders:
            raise ValueError(
                f"{seg_header.path}: SEG references series {series_uid}, which is not under "
                f"{root}; add the source series or remove the SEG"
            )
        if len(folders) > 1:
            raise ValueError(
                f"series {series_uid} referenced by {seg_header.path} is split across "
                f"folders {sorted(map(str, folders))}; keep one series in one folder"
            )
        folder = next(iter(folders))
        referenced.add(series_uid)
        cases.append(
            VolumeCase(
                case_id=folder.relative_to(root).as_posix(),
                image_path=folder,
                label_path=seg_header.path,
            )
        )

    case_counts: dict[str, int] = defaultdict(int)
    for case in cases:
        case_counts[case.case_id] += 1
    cases = [
        VolumeCase(
            case_id=f"{case.case_id}/{case.label_path.stem}"
            if case_counts[case.case_id] > 1
            else case.case_id,
            image_path=case.image_path,
            label_path=case.label_path,
        )
        for case in cases
    ]

    unpaired = sorted(
        folder
        for series_uid, folders in series_folders.items()
        if series_uid not in referenced
        for folder in folders
    )
    if unpaired:
        logger.warning("%s: %d image series have no DICOM SEG", root, len(unpaired))
    return VolumeDiscovery(
        cases=tuple(sorted(cases, key=lambda case: case.case_id)), unpaired=tuple(unpaired)
    )


def _referenced_series_uid(seg_header: _Header) -> str:
    sequence = seg_header.dataset.get("ReferencedSeriesSequence")
    series_uids = sorted({str(item.SeriesInstanceUID) for item in sequence or []})
    if len(series_uids) != 1:
        raise ValueError(
            f"{seg_header.path}: SEG references {len(series_uids)} series {series_uids}; "
            "only SEGs made from one series are supported"
        )
    return series_uids[0]
