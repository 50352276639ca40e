"""Query claims extracted with the built-in lexicon, and claim uniqueness."""

from __future__ import annotations

import polars as pl
import pytest

from medground.config.loader import load_lexicon
from medground.resources import resource_dir
from medground.verify.claims import CLAIM_COLUMNS, ClaimPatterns, add_claims, add_uniqueness
from medground.verify.rules import example_frame

PATTERNS = ClaimPatterns.from_lexicon(load_lexicon(resource_dir("rules") / "lexicon.yaml"))


def claims_of(query: str, modality: str = "endoscopy") -> dict:
    frame = add_claims(example_frame([{"query": query, "modality": modality}]), PATTERNS)
    return frame.select(list(CLAIM_COLUMNS)).row(0, named=True)


CASES = [
    ("plain", "Locate the polyp in this endoscopic image.", {"claim_terms": "polyp"}),
    ("size synonym", "Find the big polyp.", {"claim_size": "large"}),
    ("hyphenated size", "Find the medium-sized polyp.", {"claim_size": "medium-sized"}),
    ("two-word size", "Find the very small polyp.", {"claim_size": "tiny"}),
    (
        "comparative is not a size",
        "Find the larger polyp.",
        {"claim_size": None, "claim_relation": "largest"},
    ),
    ("shape synonym", "Point out the circular polyp.", {"claim_shape": "round"}),
    (
        "grid position",
        "Mark the polyp in the upper left of the endoscopic image.",
        {
            "claim_vertical": "upper",
            "claim_horizontal": "left",
            "claim_laterality": "image",
            "claim_image_side": None,
        },
    ),
    (
        "centre alone",
        "Outline the polyp located in the centre region.",
        {"claim_vertical": "middle", "claim_horizontal": "centre"},
    ),
    (
        "image side phrase",
        "Identify the polyp on the left side of the image.",
        {"claim_image_side": "left", "claim_laterality": "image"},
    ),
    (
        "image left",
        "Find the nodule at image right.",
        {"claim_image_side": "right", "claim_laterality": "image"},
    ),
    (
        "patient left",
        "Identify the lesion on the patient's left side.",
        {"claim_patient_side": "left", "claim_image_side": None, "claim_laterality": "patient"},
    ),
    (
        "left of the patient",
        "Find the nodule in the right side of the patient.",
        {"claim_patient_side": "right", "claim_laterality": "patient"},
    ),
    (
        "bare left",
        "Find the left lung nodule.",
        {"claim_laterality": "unqualified", "claim_image_side": None},
    ),
    (
        "leftmost names a side without saying whose",
        "Locate the leftmost polyp.",
        {"claim_relation": "leftmost", "claim_laterality": "unqualified"},
    ),
    (
        "hyphenated right-most",
        "Among the six necrotic regions, mark the right-most one.",
        {"claim_relation": "rightmost", "claim_laterality": "unqualified"},
    ),
    (
        "pair relation",
        "Find the lower one of the two polyps.",
        {"claim_relation": "lowermost", "claim_count": 2},
    ),
    ("number word", "Locate all three cell profiles in this micrograph.", {"claim_count": 3}),
    ("digits", "Locate all 14 cells.", {"claim_count": 14}),
    ("both", "Mark both polyps.", {"claim_count": 2}),
    ("the only", "Find the only polyp.", {"claim_count": 1}),
    ("measurement is not a count", "Find the 5 mm polyp.", {"claim_count": None}),
    (
        "one is a pronoun",
        "Among the polyps, mark the smaller one.",
        {"claim_count": None, "claim_relation": "smallest"},
    ),
    ("negation no", "Find the region with no polyp.", {"claim_negation": True}),
    ("negation without", "Mark the mucosa without lesions.", {"claim_negation": True}),
    ("negation absence of", "Show the absence of calcification.", {"claim_negation": True}),
    ("nothing negated", "Locate the nodule.", {"claim_negation": False}),
    ("plural term", "Outline each of the two polyps.", {"claim_terms": "polyp"}),
    ("term synonym", "Find the adenoma.", {"claim_terms": "polyp"}),
    ("general term is never foreign", "Find the lesion.", {"claim_foreign_terms": None}),
    ("case is ignored", "FIND THE LARGE POLYP.", {"claim_size": "large", "claim_terms": "polyp"}),
]


@pytest.mark.parametrize(("name", "query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_claims_of_query(name, query, expected):
    claims = claims_of(query)
    for column, value in expected.items():
        assert claims[column] == value, column


@pytest.mark.parametrize(
    ("modality", "query", "foreign"),
    [
        pytest.param("dermoscopy", "Find the kidney.", "kidney", id="kidney-in-dermoscopy"),
        pytest.param("ultrasound", "Find the kidney.", None, id="kidney-in-ultrasound"),
        pytest.param("endoscopy", "Find the polyp near the melanoma.", "melanoma", id="mixed"),
        pytest.param("dermoscopy", "Point out the blue-gray area.", None, id="hyphenated-term"),
        pytest.param("other", "Find the polyp.", "polyp", id="modality-without-terms"),
    ],
)
def test_foreign_terms_by_modality(modality, query, foreign):
    assert claims_of(query, modality)["claim_foreign_terms"] == foreign


def test_claim_columns_typed_and_null_safe():
    frame = add_claims(example_frame([{"query": None}, {"query": ""}]), PATTERNS)
    assert frame.schema["claim_count"] == pl.Int64
    assert frame.schema["claim_negation"] == pl.Boolean
    assert frame.get_column("claim_size").to_list() == [None, None]


def _objects(**cues: list) -> pl.DataFrame:
    count = len(cues["object_id"])
    base = {
        "image_key": ["ds/a"] * count,
        "class": ["polyp"] * count,
        "image_side": [None] * count,
        "patient_side": [None] * count,
        "vertical": [None] * count,
        "horizontal": [None] * count,
        "size": [None] * count,
        "shape": [None] * count,
        **{
            f"is_{r}": [False] * count
            for r in ("largest", "smallest", "leftmost", "rightmost", "uppermost", "lowermost")
        },
    }
    base.update(cues)
    return pl.DataFrame(base)


@pytest.mark.parametrize(
    ("query", "sizes", "largest", "unique"),
    [
        pytest.param(
            "Find the large polyp.", ["large", "small"], [True, False], True, id="size-singles-out"
        ),
        pytest.param(
            "Find the large polyp.", ["large", "large"], [False, False], False, id="size-shared"
        ),
        pytest.param("Find the polyp.", ["large", "small"], [True, False], False, id="no-claims"),
        pytest.param(
            "Find the larger polyp.",
            ["large", "large"],
            [True, False],
            True,
            id="relation-singles-out",
        ),
        pytest.param(
            "Find the large polyp.", ["large", None], [True, False], True, id="other-cue-unknown"
        ),
    ],
)
def test_uniqueness(query, sizes, largest, unique):
    objects = _objects(object_id=["polyp-1", "polyp-2"], size=sizes, is_largest=largest)
    row = {
        "query": query,
        "image_key": "ds/a",
        "class": "polyp",
        "object_id": "polyp-1",
        "class_count": 2,
    }
    samples = add_claims(example_frame([row]), PATTERNS)
    assert add_uniqueness(samples, objects).get_column("claims_unique").to_list() == [unique]


def test_uniqueness_null_for_multi():
    objects = _objects(object_id=["polyp-1", "polyp-2"])
    samples = add_claims(example_frame([{"task": "multi", "object_id": "polyp-1"}]), PATTERNS)
    assert add_uniqueness(samples, objects).get_column("claims_unique").to_list() == [None]


def test_dataset_class_words_are_not_foreign() -> None:
    from medground.config.loader import load_lexicon
    from medground.resources import resource_dir
    from medground.verify.claims import ClaimPatterns, add_claims

    patterns = ClaimPatterns.from_lexicon(load_lexicon(resource_dir("rules") / "lexicon.yaml"))
    table = pl.DataFrame({"query": ["Find the kidney."] * 2, "modality": ["dermoscopy"] * 2})
    plain = add_claims(table, patterns)
    own = add_claims(table, patterns, ["kidney"])
    assert plain["claim_foreign_terms"].to_list() == ["kidney", "kidney"]
    assert own["claim_foreign_terms"].to_list() == [None, None]
