"""The query lexicon (``rules/lexicon.yaml``): the words that make claims in a query.

Each category maps a canonical word (the cue word the engine compares against) to its
synonyms. Anatomy and finding terms are grouped per modality, so a rule can flag a term
that does not belong to the dataset's modality ("kidney" in a dermoscopic image).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medground.config.manifest import Modality, StrictModel

SizeWord = Literal["tiny", "small", "medium-sized", "large"]
ShapeWord = Literal["round", "oval", "elongated", "irregular"]
VerticalWord = Literal["upper", "middle", "lower"]
HorizontalWord = Literal["left", "centre", "right"]
SideWord = Literal["left", "right"]
RelationWord = Literal["largest", "smallest", "leftmost", "rightmost", "uppermost", "lowermost"]

Synonyms = list[str]


class TermGroups(StrictModel):
    """Anatomy and finding terms: shared ones, and those proper to one modality."""

    general: dict[str, Synonyms] = Field(
        default_factory=dict,
        description="terms allowed in every modality (lesion, region, ...): term -> synonyms",
    )
    modalities: dict[Modality, dict[str, Synonyms]] = Field(
        default_factory=dict,
        description="modality -> {term -> synonyms}; a term listed only under other "
        "modalities is foreign to a dataset of this one",
    )


class Lexicon(StrictModel):
    """The vocabulary that query claims are extracted with."""

    version: int = 1
    description: str | None = None
    sides: dict[SideWord, Synonyms] = Field(description="left/right words")
    patient_nouns: Synonyms = Field(
        min_length=1, description="words that make a side the patient's ('patient')"
    )
    image_nouns: Synonyms = Field(
        min_length=1,
        description="words for the picture itself ('image', 'slice'); 'image left' or "
        "'left side of the image' names the image's side",
    )
    vertical: dict[VerticalWord, Synonyms] = Field(description="row words of the 3x3 position grid")
    horizontal: dict[HorizontalWord, Synonyms] = Field(
        description="column words of the 3x3 position grid (used after a row word)"
    )
    centre: Synonyms = Field(
        min_length=1, description="words for the centre cell, as in 'in the centre'"
    )
    size: dict[SizeWord, Synonyms]
    shape: dict[ShapeWord, Synonyms]
    relation: dict[RelationWord, Synonyms] = Field(
        description="relational words, comparative or superlative -> the superlative"
    )
    numbers: dict[str, int] = Field(
        description="number words -> value; digits are read as numbers too"
    )
    single: Synonyms = Field(
        default_factory=list, description="phrases that claim exactly one object ('the only')"
    )
    negation: Synonyms = Field(min_length=1, description="words that negate ('no', 'without')")
    terms: TermGroups = TermGroups()

    @model_validator(mode="after")
    def _check_synonyms(self) -> Lexicon:
        categories: dict[str, list[dict[str, Synonyms]]] = {
            "sides": [dict(self.sides)],
            "vertical": [dict(self.vertical)],
            "horizontal": [dict(self.horizontal)],
            "size": [dict(self.size)],
            "shape": [dict(self.shape)],
            "relation": [dict(self.relation)],
            # One term may be listed under several modalities, but always as the same term.
            "terms": [self.terms.general, *self.terms.modalities.values()],
        }
        for name, mappings in categories.items():
            owner: dict[str, str] = {}
            for mapping in mappings:
                for canonical, synonyms in mapping.items():
                    for word in [canonical, *synonyms]:
                        key = " ".join(word.lower().split())
                        if not key:
                            raise ValueError(f"{name}.{canonical}: empty synonym")
                        if owner.get(key, canonical) != canonical:
                            raise ValueError(
                                f"{name}: '{word}' is a synonym of both '{owner[key]}' and "
                                f"'{canonical}'; keep it under one of them"
                            )
                        owner[key] = canonical
        return self

    def modality_terms(self, modality: str) -> set[str]:
        """Return the canonical terms allowed for ``modality``, shared terms included."""
        allowed = set(self.terms.general)
        allowed.update(self.terms.modalities.get(modality, {}))  # type: ignore[call-overload]
        return allowed

    def all_terms(self) -> dict[str, list[str]]:
        """Return every canonical term with its synonyms, over all groups."""
        merged: dict[str, list[str]] = {}
        for group in (self.terms.general, *self.terms.modalities.values()):
            for term, synonyms in group.items():
                merged.setdefault(term, [])
                merged[term] += [s for s in synonyms if s not in merged[term]]
        return merged
