"""Phrasings of the offline template synthesiser (``prompts/template_queries.yaml``).

Each phrasing is a Jinja template for one task type. It names the cues it states in
``requires``; the synthesiser offers it only for targets where all of them are known,
so no query states a cue that the geometry does not support.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medground.config.manifest import StrictModel

TaskType = Literal["single", "multi", "relation"]

# Variables a phrasing may use, each None when the cue is not known for the target.
PHRASING_VARIABLES: dict[str, str] = {
    "cls": "singular words for the class, e.g. 'polyp'",
    "cls_plural": "plural words for the class, e.g. 'polyps'",
    "modality": "the dataset's modality, e.g. 'endoscopy'",
    "modality_noun": "how to name the image, e.g. 'endoscopic image'",
    "anatomy": "the dataset's anatomy or None",
    "size": "size word: tiny, small, medium-sized or large",
    "position": "3x3 grid cell, e.g. 'upper left', 'centre'",
    "vertical": "upper, middle or lower",
    "image_side": "'left' or 'right' side of the image",
    "patient_side": "patient's 'left' or 'right' when the orientation is known",
    "shape": "round, oval, elongated or irregular",
    "count": "number of objects of the class in the image",
    "count_word": "that number in words: 'two', 'three'",
    "relation": "largest, smallest, leftmost, rightmost, uppermost or lowermost",
    "relation_word": "the relation as the query says it: 'larger', 'largest', 'left-most'",
    "border": "True when the object touches the image border",
}


class Phrasing(StrictModel):
    """One way of phrasing a query for a task type."""

    id: str = Field(pattern=r"^[a-z0-9_.-]+$")
    text: str = Field(description="Jinja template of the query")
    requires: list[str] = Field(
        default_factory=list, description="cues that must be known for this phrasing"
    )
    when: str | None = Field(
        None,
        description="Jinja expression over the same variables that must be true, "
        "e.g. 'count == 1' for phrasings that do not single an object out",
    )


class PhrasingFile(StrictModel):
    """Phrasings for each task type."""

    version: int = 1
    modality_nouns: dict[str, str] = Field(
        default_factory=dict,
        description="how queries name an image of each modality, e.g. endoscopy: endoscopic image",
    )
    single: list[Phrasing] = Field(min_length=1)
    multi: list[Phrasing] = Field(min_length=1)
    relation: list[Phrasing] = Field(min_length=1)
