"""The dataset manifest: one YAML file that describes one source dataset.

These models import nothing from the runtime stages. ``schemas/manifest.schema.json`` is
generated from :class:`Manifest`, so the schema and the model cannot drift apart.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from medground.config.provider import JudgeSettings, ProviderConfig, VlmSynthSettings
from medground.config.volume import VolumeConfig
from medground.split import SplitConfig

Modality = Literal[
    "endoscopy",
    "dermoscopy",
    "ultrasound",
    "mri",
    "ct",
    "xray",
    "mammography",
    "microscopy",
    "histology",
    "fundus",
    "oct",
    "pet",
    "other",
]

# Placeholders every path template may use; named groups of ``images.pattern`` add more.
PATH_PLACEHOLDERS = ("stem", "name", "suffix", "dir", "parent", "case")

SLUG = r"^[a-z0-9][a-z0-9._-]*$"

# Rule files in force when a manifest lists none: every shipped check.
DEFAULT_RULE_FILES = ("geometry.yaml", "claims.yaml", "priors.yaml", "evidence.yaml")


class StrictModel(BaseModel):
    """Base for declarative models: unknown keys are errors and instances are immutable."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"invalid path template {template!r}: {exc}") from exc


class ClassSpec(StrictModel):
    """A target class: its id in records and the words queries use for it."""

    name: str = Field(pattern=SLUG, description="class id used in records, e.g. 'polyp'")
    display: str | None = Field(
        None, description="singular noun phrase used in queries; default: name with spaces"
    )
    plural: str | None = Field(None, description="plural noun phrase; default: display + 's'")
    description: str | None = None
    area_fraction_bounds: tuple[float, float] | None = Field(
        None,
        description="plausible object area as a fraction of the image [min, max]; "
        "objects outside are flagged by the medical-prior rules",
    )
    targets: bool = Field(
        True, description="false for classes that exist only to mark images without a target"
    )

    @property
    def display_name(self) -> str:
        """The singular words for this class in queries."""
        return self.display or self.name.replace("_", " ")

    @property
    def plural_name(self) -> str:
        """The plural words for this class in queries."""
        return self.plural or f"{self.display_name}s"


class ImagesSpec(StrictModel):
    """Location of the images, relative to the dataset root."""

    glob: str | list[str] = Field(description="glob pattern(s) relative to root; ** recurses")
    exclude: list[str] = Field(
        default_factory=list,
        description="glob patterns (relative paths) of files that are not images",
    )
    pattern: str | None = Field(
        None,
        description="regular expression matched against the relative image path; "
        "its named groups become placeholders in mask paths, class and case_id",
    )
    case_id: str = Field(
        "{stem}", description="template of the readable case id used in record ids"
    )

    @field_validator("pattern")
    @classmethod
    def _compile_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    def group_names(self) -> set[str]:
        """Names of the regular expression's named groups."""
        return set(re.compile(self.pattern).groupindex) if self.pattern else set()


class _MaskSourceBase(StrictModel):
    name: str | None = Field(None, description="readable name of this mask source")
    path: str = Field(
        description="template of the mask path relative to root, e.g. '{dir}/../masks/{stem}.png'; "
        "glob wildcards match several files"
    )
    required: bool = Field(
        True, description="an image with no matching mask file is reported as unpaired"
    )
    fill_holes: bool = Field(
        False, description="fill closed outlines (e.g. HC18 ellipse annotations) before measuring"
    )
    min_object_px: int | None = Field(
        None, ge=0, description="override of objects.min_object_px for this source (pixels)"
    )
    instances: Literal["components", "file"] = Field(
        "components",
        description="'components': each connected component is an object; "
        "'file': each mask file is one object (its components above the minimum size together)",
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        _template_fields(value)
        return value


class BinaryMasks(_MaskSourceBase):
    """Masks with one class: foreground where the grey value exceeds ``threshold``."""

    encoding: Literal["binary"]
    class_: str = Field(
        alias="class", description="class name, or a template such as '{label}' from images.pattern"
    )
    threshold: int = Field(
        127,
        ge=0,
        le=65534,
        description="grey values above this are foreground; JPEG masks need a mid value",
    )
    invert: bool = Field(
        False, description="foreground is where the value is at or below threshold"
    )


class LabelMapMasks(_MaskSourceBase):
    """Integer label maps: each value is a class."""

    encoding: Literal["label_map"]
    labels: dict[int, str] = Field(description="label value -> class name")
    background: int = Field(0, description="label value of the background")
    ignore: list[int] = Field(
        default_factory=list, description="label values that are neither background nor a target"
    )


class PaletteMasks(_MaskSourceBase):
    """RGB masks where each colour is a class."""

    encoding: Literal["palette"]
    colors: dict[str, str] = Field(description="'#rrggbb' -> class name")
    background: str = Field("#000000", description="colour of the background")
    tolerance: int = Field(
        0, ge=0, le=128, description="maximum per-channel difference still matching a colour"
    )

    @field_validator("colors")
    @classmethod
    def _check_colors(cls, value: dict[str, str]) -> dict[str, str]:
        for color in value:
            if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
                raise ValueError(f"invalid colour {color!r}: write colours as '#rrggbb'")
        return value


class PerClassFileMasks(_MaskSourceBase):
    """Binary masks whose class comes from the file name (one or more files per image)."""

    encoding: Literal["per_class_files"]
    class_pattern: str = Field(
        description="regular expression on the mask file name with a group named 'label'"
    )
    class_map: dict[str, str | None] = Field(
        description="captured label -> class name; null records the file as skipped with a reason"
    )
    threshold: int = Field(127, ge=0, le=65534)

    @field_validator("class_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        if "label" not in compiled.groupindex:
            raise ValueError(f"class_pattern {value!r} needs a named group (?P<label>...)")
        return value


MaskSource = Annotated[
    BinaryMasks | LabelMapMasks | PaletteMasks | PerClassFileMasks,
    Field(discriminator="encoding"),
]


class ObjectsSpec(StrictModel):
    """Settings that turn masks into objects."""

    connectivity: Literal[1, 2] = Field(
        2, description="1: 4-connected pixels form a component; 2: 8-connected"
    )
    min_object_px: int = Field(
        10, ge=0, description="components smaller than this (pixels) are removed and recorded"
    )


class TargetsSpec(StrictModel):
    """Kinds and caps of the targets built per image."""

    single: bool = Field(True, description="one target per object")
    multi: bool = Field(True, description="all objects of a class when there are several")
    relation: bool = Field(True, description="relational picks such as 'the larger of the two'")
    max_single_per_image: int = Field(
        6, ge=1, description="cap on single targets per image (chosen reproducibly by seed)"
    )
    max_relation_per_class: int = Field(
        2, ge=0, description="cap on relational targets per class (chosen reproducibly by seed)"
    )
    max_multi_objects: int = Field(
        12, ge=2, description="classes with more objects than this give no all-objects target"
    )


class TemplateSynthesizerSpec(StrictModel):
    """The offline template synthesiser: phrasings filled in from the cues."""

    kind: Literal["template"] = "template"
    phrasings: str = Field(
        "template_queries.yaml",
        description="phrasing file of the template synthesiser: a name in prompts/ or a path "
        "relative to the manifest",
    )
    queries_per_target: int = Field(1, ge=1, le=10)


_PROVIDER_FILE_DESCRIPTION = (
    "YAML file with the provider settings (the keys of 'provider'), relative to the "
    "manifest; use it instead of 'provider' to share one endpoint between manifests"
)


def _check_provider_source(provider: ProviderConfig | None, provider_file: str | None) -> None:
    if provider is None and provider_file is None:
        raise ValueError(
            "missing provider settings: add 'provider:' with at least 'model', e.g. "
            "provider: {model: openai/gpt-4o}, or 'provider_file:' naming a YAML file with them"
        )
    if provider is not None and provider_file is not None:
        raise ValueError(
            f"both 'provider' and 'provider_file' ({provider_file!r}) are set; keep one of them"
        )


class VlmSynthesizerSpec(VlmSynthSettings):
    """The VLM synthesiser of a manifest: the settings, and the provider or its file."""

    kind: Literal["vlm"]
    provider: ProviderConfig | None = None
    provider_file: str | None = Field(None, description=_PROVIDER_FILE_DESCRIPTION)

    @model_validator(mode="after")
    def _one_provider_source(self) -> VlmSynthesizerSpec:
        _check_provider_source(self.provider, self.provider_file)
        return self


class JudgeSpec(JudgeSettings):
    """The visual judge of a manifest: the settings, and the provider or its file."""

    provider: ProviderConfig | None = None
    provider_file: str | None = Field(None, description=_PROVIDER_FILE_DESCRIPTION)

    @model_validator(mode="after")
    def _one_provider_source(self) -> JudgeSpec:
        _check_provider_source(self.provider, self.provider_file)
        return self


def _synthesizer_kind(value: Any) -> str:
    # 'kind' may be left out for the template synthesiser, the default.
    if isinstance(value, dict):
        return str(value.get("kind", "template"))
    return str(getattr(value, "kind", "template"))


SynthesizerSpec = Annotated[
    Annotated[TemplateSynthesizerSpec, Tag("template")] | Annotated[VlmSynthesizerSpec, Tag("vlm")],
    Discriminator(
        _synthesizer_kind,
        custom_error_type="invalid_synthesizer_kind",
        custom_error_message="synthesizer kind must be 'template' or 'vlm'",
    ),
    # The schema names the tag, so that a validation error reports the branch meant.
    Field(json_schema_extra={"discriminator": {"propertyName": "kind"}}),
]


class Manifest(StrictModel):
    """One source dataset and how to turn it into grounding samples."""

    name: str = Field(pattern=SLUG, description="dataset id used in record ids")
    description: str = ""
    modality: Modality
    anatomy: str | None = None
    root: str = Field(
        description="dataset folder, relative to this file or absolute; ${VAR:-default} "
        "expands environment variables; 'mgr run --root' overrides it"
    )
    orientation: Literal["radiological", "neurological", "unknown"] = Field(
        "unknown",
        description="radiological: patient right on image left; neurological: patient right "
        "on image right; unknown: only image sides can be named",
    )
    images: ImagesSpec
    masks: list[MaskSource] = Field(min_length=1)
    classes: list[ClassSpec] = Field(min_length=1)
    objects: ObjectsSpec = ObjectsSpec()
    targets: TargetsSpec = TargetsSpec()
    cues: str = Field("cues.yaml", description="cue threshold file: a name in rules/ or a path")
    lexicon: str = Field(
        "lexicon.yaml", description="query lexicon of the claim checks: a name in rules/ or a path"
    )
    rules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RULE_FILES),
        description="rule files: names in rules/ or paths relative to this file",
    )
    synthesizer: SynthesizerSpec = Field(
        TemplateSynthesizerSpec(),
        description="who writes the queries: kind 'template' (offline, the default) or 'vlm'",
    )
    judge: JudgeSpec | None = Field(
        None,
        description="visual judge (verification stage 3); null skips it and records "
        "verdict 'skipped'",
    )
    split: SplitConfig = Field(
        SplitConfig(),
        description="train/val/test assignment by group (patient or case), so that no group "
        "appears in two splits; default: each image is its own group, 80/10/10",
    )
    volume: VolumeConfig | None = Field(
        None,
        description="for 3D sources: reader format, plane, slice strategy and display "
        "scaling; images and masks then name volume and label-map files",
    )
    seed: int = Field(0, description="seed of every random choice in the run")

    @model_validator(mode="after")
    def _check_references(self) -> Manifest:
        names = [c.name for c in self.classes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
        groups = self.images.group_names()
        allowed = set(PATH_PLACEHOLDERS) | groups
        for index, source in enumerate(self.masks):
            for field_name in _template_fields(source.path):
                if field_name not in allowed:
                    raise ValueError(
                        f"masks.{index}.path uses unknown placeholder '{{{field_name}}}'; valid: "
                        + ", ".join(sorted(allowed))
                    )
            for class_name in _declared_classes(source):
                if "{" in class_name:
                    for field_name in _template_fields(class_name):
                        if field_name not in allowed:
                            raise ValueError(
                                f"masks.{index}.class uses unknown placeholder "
                                f"'{{{field_name}}}'; valid: " + ", ".join(sorted(allowed))
                            )
                elif class_name not in names:
                    raise ValueError(
                        f"masks.{index} names class '{class_name}', which is not in classes "
                        f"({', '.join(names)}); add it to classes or fix the name"
                    )
        if self.volume is not None and self.volume.format not in ("nnunet", "dicom"):
            if self.volume.labels is None and not getattr(self.masks[0], "labels", None):
                raise ValueError(
                    f"volume format '{self.volume.format}' stores no class names: give "
                    "masks.0 'encoding: label_map' with labels, e.g. {1: necrosis, 2: oedema}"
                )
        for field_name in _template_fields(self.images.case_id):
            if field_name not in allowed:
                raise ValueError(
                    f"images.case_id uses unknown placeholder '{{{field_name}}}'; valid: "
                    + ", ".join(sorted(allowed))
                )
        return self

    def class_spec(self, name: str) -> ClassSpec | None:
        """Return the class named ``name`` or None."""
        return next((c for c in self.classes if c.name == name), None)


def _declared_classes(source: Any) -> list[str]:
    if isinstance(source, BinaryMasks):
        return [source.class_]
    if isinstance(source, LabelMapMasks):
        return list(source.labels.values())
    if isinstance(source, PaletteMasks):
        return list(source.colors.values())
    if isinstance(source, PerClassFileMasks):
        return [c for c in source.class_map.values() if c is not None]
    return []
