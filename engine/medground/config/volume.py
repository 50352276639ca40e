"""Manifest models for the ``volume:`` block: how 3D volumes and 2D stacks become slices.

These models import nothing from the runtime stages, so a manifest can be validated
without nibabel, pydicom or highdicom installed. The readers live in ``medground.io``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

VolumeFormat = Literal["nifti", "nrrd", "dicom", "npz", "npy", "nnunet"]
PlaneName = Literal["axial", "coronal", "sagittal"]
SliceStrategy = Literal["largest_per_label", "every_kth", "all_foreground"]
WindowPreset = Literal["lung", "soft_tissue", "bone", "brain"]

# Common radiology presets as (level, width) in Hounsfield units. Published values differ
# by some tens of HU between sources, so a protocol that needs exact values should set
# ``window: {level: ..., width: ...}``.
CT_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (50.0, 350.0),
    "bone": (500.0, 2000.0),
    "brain": (40.0, 80.0),
}

# Modality, body part and pixel geometry: nothing that identifies a patient or a visit.
DEFAULT_DICOM_TAGS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
)

# Keyword patterns of DICOM attributes that identify a patient, a person, a place or a
# visit. The DICOM reader additionally rejects every attribute whose value representation
# is a person name, date, time or UID.
_IDENTIFYING_KEYWORD = re.compile(
    r"^(Patient|OtherPatient|Issuer)|Name$|Date|Time$|Institution|Physician|Operator"
    r"|Accession|Address|Telephone|Station|UID$|ID$|Number$|Comments$"
)
# Keywords that the pattern above would catch but that describe the acquisition only.
_SAFE_KEYWORDS = frozenset(
    {
        "InstanceNumber",
        "SeriesNumber",
        "AcquisitionNumber",
        "PatientPosition",
        "PatientOrientation",
        "RepetitionTime",
        "EchoTime",
        "InversionTime",
        "ExposureTime",
    }
)


def identifying_dicom_keywords(keywords: list[str] | tuple[str, ...]) -> list[str]:
    """Return the keywords that name identifying DICOM attributes (patient, date, place)."""
    return [
        keyword
        for keyword in keywords
        if keyword not in _SAFE_KEYWORDS and _IDENTIFYING_KEYWORD.search(keyword)
    ]


class WindowLevel(BaseModel):
    """An explicit display window: ``level`` is the centre, ``width`` the range (image units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: float
    width: float = Field(gt=0)


class NpzConfig(BaseModel):
    """Array keys of a MedSegBench-style ``.npz`` bundle.

    MedSegBench bundles store one array pair per split, ``<split>_images`` with shape
    ``(N, H, W)`` or ``(N, H, W, C)`` and ``<split>_label`` with shape ``(N, H, W)``;
    datasets with sub-categories add ``_<category>`` to both keys. Explicit keys override
    the names built from ``split`` and ``category``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["train", "val", "test"] = "train"
    category: str | None = None
    images_key: str | None = None
    labels_key: str | None = None

    def resolved_keys(self) -> tuple[str, str]:
        """Return the ``(images_key, labels_key)`` pair to read from the bundle."""
        suffix = f"_{self.category}" if self.category else ""
        images_key = self.images_key or f"{self.split}_images{suffix}"
        labels_key = self.labels_key or f"{self.split}_label{suffix}"
        return images_key, labels_key


class VolumeConfig(BaseModel):
    """How to read volumes (or 2D stacks) and which 2D slices to hand to the pipeline.

    Attributes:
        format: File format or layout of the images and label maps.
        plane: Slice plane for 3D formats. Stacks (``npz``, ``npy``) have no patient
            orientation, so they reject this key.
        strategy: Slice choice. ``largest_per_label`` yields, for each label id, the slice
            where that label covers the largest area. ``every_kth`` yields every ``k``-th
            slice of the volume (index 0, k, 2k, ...) that has foreground.
            ``all_foreground`` yields every slice with foreground.
        k: Step for ``every_kth``.
        min_object_mm2: A label counts as present on a slice only if one of its 2D
            connected components covers at least this area in mm² (in pixels for stacks
            without spacing).
        window: CT display window, a preset name or an explicit level and width.
        percentile: ``[lo, hi]`` percentiles mapped to 0 and 255, for MRI and other
            modalities without calibrated units.
        percentile_of: Voxels the percentiles are computed over: the whole volume, or only
            non-zero voxels (for skull-stripped or background-zeroed images).
        label_tolerance: Maximum distance between a float label value and its nearest
            integer id.
        labels: Label id to class name. Id 0 is background and must not be listed. When
            absent, ``nnunet`` reads the names from ``dataset.json`` and ``dicom`` from
            the SEG's segment labels.
        channel: Channel of multi-channel images (the ``_XXXX`` suffix of nnU-Net files,
            the last axis of 4D NIfTI and of ``(N, H, W, C)`` stacks with C other than 3).
        dicom_tags_whitelist: DICOM keywords copied into each slice's ``meta``.
        npz: Keys of the arrays in a ``.npz`` bundle.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: VolumeFormat
    plane: PlaneName = "axial"
    strategy: SliceStrategy = "largest_per_label"
    k: int | None = Field(default=None, ge=1)
    min_object_mm2: float = Field(default=0.0, ge=0)
    window: WindowPreset | WindowLevel | None = None
    percentile: tuple[float, float] | None = None
    percentile_of: Literal["volume", "nonzero"] = "volume"
    label_tolerance: float = Field(default=1e-3, ge=0, lt=0.5)
    labels: dict[int, str] | None = Field(
        default=None, json_schema_extra={"propertyNames": {"pattern": "^[1-9][0-9]*$"}}
    )
    channel: int = Field(default=0, ge=0)
    dicom_tags_whitelist: tuple[str, ...] = DEFAULT_DICOM_TAGS
    npz: NpzConfig = Field(default_factory=NpzConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> VolumeConfig:
        """Reject settings that contradict each other or the chosen format."""
        if self.strategy == "every_kth" and self.k is None:
            raise ValueError("strategy 'every_kth' needs 'k', e.g. k: 5")
        if self.strategy != "every_kth" and self.k is not None:
            raise ValueError(f"'k' applies only to strategy 'every_kth', not '{self.strategy}'")

        if self.window is not None and self.percentile is not None:
            raise ValueError("set either 'window' (CT) or 'percentile' (MRI), not both")
        if self.percentile is not None:
            low, high = self.percentile
            if not 0 <= low < high <= 100:
                raise ValueError(
                    f"invalid percentile {list(self.percentile)}: expected [lo, hi] with "
                    "0 <= lo < hi <= 100, e.g. [0.5, 99.5]"
                )

        if self.labels is not None:
            bad_ids = sorted(label_id for label_id in self.labels if label_id <= 0)
            if bad_ids:
                raise ValueError(
                    f"invalid label ids {bad_ids}: id 0 is background and ids must be "
                    "positive; remove them from 'labels'"
                )

        stack_formats = ("npz", "npy")
        if self.format in stack_formats and "plane" in self.model_fields_set:
            raise ValueError(
                f"'plane' does not apply to format '{self.format}': its arrays are stacks "
                "of 2D images without patient orientation; remove 'plane'"
            )
        if self.format != "npz" and "npz" in self.model_fields_set:
            raise ValueError(f"'npz' applies only to format 'npz', not '{self.format}'")

        identifying = identifying_dicom_keywords(self.dicom_tags_whitelist)
        if identifying:
            raise ValueError(
                f"dicom_tags_whitelist names identifying attributes {identifying}; slice "
                "metadata must not carry patient, person, date, place or UID values. "
                f"Remove them (default: {list(DEFAULT_DICOM_TAGS)})"
            )
        return self

    def window_level_width(self) -> tuple[float, float] | None:
        """Return the display window as ``(level, width)``, or None without a window."""
        if self.window is None:
            return None
        if isinstance(self.window, WindowLevel):
            return self.window.level, self.window.width
        return CT_WINDOW_PRESETS[self.window]
