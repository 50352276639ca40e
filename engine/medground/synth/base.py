"""The synthesiser interface: targets with cues in, referring queries out.

A synthesiser receives one :class:`SynthesisRequest` per image (the image, its objects
and the targets the engine selected) and returns query candidates or rejections. The
offline template synthesiser writes one query per target; a VLM synthesiser may choose
its own targets among the image's objects, which is why candidates name object ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ClassInfo:
    """A target class of a dataset: its id in records and the words queries use for it."""

    name: str
    display: str
    plural: str


@dataclass(frozen=True)
class DatasetInfo:
    """What a synthesiser may know about the dataset an image comes from."""

    name: str
    modality: str
    anatomy: str | None
    classes: tuple[ClassInfo, ...]
    # "radiological", "neurological" or "unknown": whether patient sides can be named.
    orientation: str


@dataclass(frozen=True)
class SynthesisRequest:
    """One image with its objects and selected targets.

    ``objects`` and ``targets`` are plain dicts (rows of the engine's object and target
    tables). Every object has ``object_id``, ``class``, ``bbox_xyxy`` (pixels of the
    original image, half-open) and its cues; every target has ``target_id``, ``task``
    (``single``, ``multi`` or ``relation``), ``class``, ``object_ids`` and its cues.
    """

    image_key: str
    image_path: Path
    image_sha256: str
    width: int
    height: int
    dataset: DatasetInfo
    objects: tuple[dict[str, Any], ...]
    targets: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class QueryCandidate:
    """One synthesised query and the objects it refers to."""

    image_key: str
    target_id: str
    query: str
    task: str
    object_ids: tuple[str, ...]
    synthesizer: str
    model: str | None = None
    prompt_sha256: str | None = None
    template_id: str | None = None
    cost_usd: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A candidate or input that failed a stage, with the rule id and a readable message."""

    key: str
    stage: str
    rule_id: str
    message: str
    image_key: str | None = None


class Synthesizer(Protocol):
    """Turns requests into query candidates; failures come back as rejections."""

    name: str

    def synthesize(
        self, requests: Sequence[SynthesisRequest]
    ) -> tuple[list[QueryCandidate], list[Rejection]]:
        """Write queries for a batch of images."""
        ...
