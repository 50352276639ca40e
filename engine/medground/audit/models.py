"""Data models of an audit pack and of a reviewer's decisions file.

Both files are JSON: ``pack.json`` is written by ``mgr audit sample`` and the decisions
file by the review page's download button or by ``mgr audit import-labelstudio``. The
models reject unknown keys so that a hand-edited file with a typo fails at load.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

PACK_FORMAT: Final = "medground-audit-pack"
DECISIONS_FORMAT: Final = "medground-audit-decisions"
FORMAT_VERSION: Final = 1

Verdict = Literal["correct", "wrong_box", "wrong_text", "ambiguous"]
# Order of the review buttons and of report columns; keys 1-4 on the page follow it.
VERDICTS: tuple[Verdict, ...] = ("correct", "wrong_box", "wrong_text", "ambiguous")
VERDICT_LABELS: dict[str, str] = {
    "correct": "Correct",
    "wrong_box": "Wrong box",
    "wrong_text": "Wrong text",
    "ambiguous": "Ambiguous",
}
ItemKind = Literal["accepted", "rejected"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PackTarget(_Strict):
    """One referred object or class union: ``bbox_xyxy`` in original-image pixels, half-open."""

    class_name: str = Field(alias="class", min_length=1)
    bbox_xyxy: tuple[float, float, float, float]
    object_ids: list[str] = Field(default_factory=list)


class PackImage(_Strict):
    """The original image a query is about and its rendered copies in the pack."""

    path: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    # Pack-relative paths of the downscaled copies, with and without the boxes drawn.
    boxed: str
    clean: str
    # Size of the rendered copies; ``scale`` = rendered width / original width.
    rendered_width: int = Field(ge=1)
    rendered_height: int = Field(ge=1)
    scale: float = Field(gt=0)


class PackItem(_Strict):
    """One sampled record (``kind="accepted"``) or rejected candidate (``"rejected"``)."""

    item_id: str
    kind: ItemKind
    record_id: str
    run_dir: str
    stratum: str
    dataset: str
    task: str | None = None
    split: str | None = None
    query: str
    image: PackImage
    targets: list[PackTarget] = Field(min_length=1)
    # Why a rejected candidate was rejected; None for accepted records.
    stage: str | None = None
    rule_id: str | None = None
    message: str | None = None


class PackSource(_Strict):
    """A run folder the pack was sampled from, with digests of the files read."""

    run_dir: str
    records_sha256: str
    rejected_sha256: str | None = None
    accepted_eligible: int
    rejected_reviewable: int


class StratumCount(_Strict):
    """Population and sample size of one stratum."""

    kind: ItemKind
    stratum: str
    population: int
    sampled: int


class PackManifest(_Strict):
    """Contents of ``pack.json``: how the sample was drawn and every item in it."""

    format: Literal["medground-audit-pack"] = PACK_FORMAT
    version: Literal[1] = FORMAT_VERSION
    pack_id: str
    created_at: str
    seed: int
    n_requested: int
    by: list[str]
    split: str
    include_rejected: int
    max_side: int
    sources: list[PackSource]
    strata: list[StratumCount]
    notes: list[str] = Field(default_factory=list)
    items: list[PackItem]


class Decision(_Strict):
    """One reviewer's verdict on one pack item.

    The item's kind, dataset, task and rejection reason are copied from the pack so a
    report needs only the decisions files.
    """

    item_id: str
    record_id: str
    kind: ItemKind
    dataset: str
    task: str | None = None
    stage: str | None = None
    rule_id: str | None = None
    verdict: Verdict
    comment: str = ""
    decided_at: str | None = None
    # Boxes the reviewer drew instead of the pack's, when the review tool allows it
    # (Label Studio does, the review page does not).
    corrected_targets: list[PackTarget] | None = None


class DecisionsFile(_Strict):
    """Contents of a decisions file: one reviewer on one pack."""

    format: Literal["medground-audit-decisions"] = DECISIONS_FORMAT
    version: Literal[1] = FORMAT_VERSION
    pack_id: str = Field(min_length=1)
    reviewer: str = Field(min_length=1)
    source: Literal["review-page", "label-studio"]
    exported_at: str | None = None
    n_items: int = Field(ge=0)
    decisions: list[Decision]
