"""Query claims: what a query states about its target, as columns of the sample table.

Every claim is extracted with polars string expressions over the whole batch, from word
lists in the lexicon (``rules/lexicon.yaml``), so rules can compare what the query says
with the target's cues (``claim_size = size``). Matching ignores case and stands on word
boundaries. When a query states two values of one claim (two size words), the first one
in the text is kept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from medground.config.lexicon import Lexicon
from medground.targets import RELATIONS
from medground.verify.columns import Column, register_columns

logger = logging.getLogger(__name__)

CLAIM_COLUMNS: dict[str, Column] = {
    "claim_image_side": Column(
        pl.String, "image side the query names ('image left', 'left side of the image')", None
    ),
    "claim_patient_side": Column(
        pl.String, 'patient side the query names ("the patient\'s left")', None
    ),
    "claim_laterality": Column(
        pl.String,
        "how the query's left/right words are qualified: patient, image or unqualified; "
        "null when it has none",
        None,
    ),
    "claim_vertical": Column(
        pl.String, "grid row the query names: upper, middle or lower ('upper left')", None
    ),
    "claim_horizontal": Column(
        pl.String, "grid column the query names: left, centre or right ('upper left')", None
    ),
    "claim_size": Column(
        pl.String, "size word of the query: tiny, small, medium-sized, large", None
    ),
    "claim_shape": Column(
        pl.String, "shape word of the query: round, oval, elongated, irregular", None
    ),
    "claim_count": Column(
        pl.Int64,
        "number of objects the query states (largest number, 'both' = 2, 'the only' = 1)",
        None,
    ),
    "claim_relation": Column(
        pl.String, "relational word, as its superlative: largest, smallest, leftmost, ...", None
    ),
    "claim_terms": Column(
        pl.String,
        "anatomy and finding terms of the lexicon found in the query, comma-separated",
        None,
    ),
    "claim_foreign_terms": Column(
        pl.String,
        "terms of the query that the lexicon lists for other modalities only, comma-separated",
        None,
    ),
    "claim_negation": Column(
        pl.Boolean, "the query negates ('no', 'without', 'absence of')", False
    ),
}
register_columns(CLAIM_COLUMNS)

# Cue columns of an object that a claim column is compared with, for uniqueness.
_CLAIM_CUES = {
    "claim_image_side": "image_side",
    "claim_patient_side": "patient_side",
    "claim_vertical": "vertical",
    "claim_horizontal": "horizontal",
    "claim_size": "size",
    "claim_shape": "shape",
}
_UNITS = r"(?i)(mm|cm|px|pixels?|%)$"


def _normalise(word: str) -> str:
    return " ".join(word.lower().split())


def _alternation(words: Iterable[str]) -> str:
    """Return a regex alternation of ``words``, longest first, spaces matching any whitespace."""
    unique = sorted({_normalise(w) for w in words}, key=lambda w: (-len(w), w))
    return "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in unique)


def _lookup(mapping: dict[str, list[str]], plurals: bool = False) -> dict[str, str]:
    lookup = {}
    for canonical, synonyms in mapping.items():
        for word in (canonical, *synonyms):
            key = _normalise(word)
            lookup[key] = canonical
            if plurals:
                lookup.setdefault(key + "s", canonical)
                lookup.setdefault(key + "es", canonical)
    return lookup


@dataclass(frozen=True)
class ClaimPatterns:
    """Regexes and word maps built once from a lexicon."""

    lexicon: Lexicon
    side: str
    patient: str
    image: str
    maps: dict[str, dict[str, str]]

    @classmethod
    def from_lexicon(cls, lexicon: Lexicon) -> ClaimPatterns:
        """Build the patterns of every claim from ``lexicon``."""
        maps = {
            "side": _lookup(dict(lexicon.sides)),
            "vertical": _lookup(dict(lexicon.vertical)),
            "horizontal": _lookup(dict(lexicon.horizontal)),
            "size": _lookup(dict(lexicon.size)),
            "shape": _lookup(dict(lexicon.shape)),
            "relation": _lookup(dict(lexicon.relation)),
            "terms": _lookup(lexicon.all_terms(), plurals=True),
        }
        return cls(
            lexicon=lexicon,
            side=_alternation(maps["side"]),
            patient=_alternation(lexicon.patient_nouns),
            image=_alternation(lexicon.image_nouns),
            maps=maps,
        )


def _canonical(query: pl.Expr, lookup: dict[str, str], pattern: str, group: int = 1) -> pl.Expr:
    found = query.str.extract(pattern, group).str.to_lowercase().str.replace_all(r"\s+", " ")
    return found.replace_strict(lookup, default=None, return_dtype=pl.String)


def _word_pattern(lookup: dict[str, str]) -> str:
    return rf"(?i)\b({_alternation(lookup)})\b"


def claim_expressions(patterns: ClaimPatterns, query: str = "query") -> dict[str, pl.Expr]:
    """Return one expression per claim column, reading the ``query`` column."""
    q = pl.col(query)
    lex = patterns.lexicon
    maps = patterns.maps
    side, patient, image = patterns.side, patterns.patient, patterns.image
    # "of the image", "of this endoscopic image": up to two words between article and noun.
    of_image = rf"of\s+(?:the|this)\s+(?:[\w-]+\s+){{0,2}}(?:{image})\b"

    patient_side = pl.coalesce(
        _canonical(q, maps["side"], rf"(?i)\b(?:{patient})\s+({side})\b"),
        _canonical(q, maps["side"], rf"(?i)\b({side})\s+(?:side\s+)?of\s+the\s+(?:{patient})\b"),
    )
    image_side = pl.coalesce(
        _canonical(q, maps["side"], rf"(?i)\b(?:{image})[\s-]+({side})\b"),
        _canonical(q, maps["side"], rf"(?i)\b({side})\s+(?:side|half)\s+{of_image}"),
        _canonical(q, maps["side"], rf"(?i)\bon\s+the\s+({side})\s+{of_image}"),
    )
    # A side word followed by a letter or hyphen is part of another word ("lefty"), except
    # the superlatives "leftmost" and "left-most", which name a side too.
    has_side = q.str.contains(rf"(?i)\b(?:{side})(?:-?most)?(?:$|[^\w-])")
    side_of_image = q.str.contains(rf"(?i)\b(?:{side})\s+(?:(?:side|half)\s+)?{of_image}")
    laterality = (
        pl.when(~has_side)
        .then(pl.lit(None, pl.String))
        .when(patient_side.is_not_null())
        .then(pl.lit("patient"))
        .when(image_side.is_not_null() | side_of_image)
        .then(pl.lit("image"))
        .otherwise(pl.lit("unqualified"))
    )

    vertical_alt = _alternation(maps["vertical"])
    horizontal_alt = _alternation(maps["horizontal"])
    grid = rf"(?i)\b({vertical_alt})[\s-]+({horizontal_alt})\b"
    in_centre = q.str.contains(rf"(?i)\b(?:in|at)\s+the\s+(?:{_alternation(lex.centre)})\b")
    vertical = pl.coalesce(
        _canonical(q, maps["vertical"], grid, 1),
        pl.when(in_centre).then(pl.lit("middle")),
    )
    horizontal = pl.coalesce(
        _canonical(q, maps["horizontal"], grid, 2),
        pl.when(in_centre).then(pl.lit("centre")),
    )

    number_lookup = {_normalise(w): str(n) for w, n in lex.numbers.items()}
    numbers = (
        q.str.extract_all(
            rf"(?i)\b(?:\d+|{_alternation(number_lookup)})\b(?:\s*(?:mm|cm|px|pixels?|%))?"
        )
        .list.eval(
            pl.element()
            .filter(~pl.element().str.contains(_UNITS))
            .str.to_lowercase()
            .replace(number_lookup)
            .cast(pl.Int64, strict=False)
        )
        .list.max()
    )
    single = (
        q.str.contains(rf"(?i)\b(?:{_alternation(lex.single)})\b") if lex.single else pl.lit(False)
    )
    count = pl.coalesce(numbers, pl.when(single).then(pl.lit(1, pl.Int64)))

    terms = _term_list(q, maps["terms"])
    foreign = _foreign_terms(terms, patterns)

    return {
        "claim_image_side": image_side,
        "claim_patient_side": patient_side,
        "claim_laterality": laterality,
        "claim_vertical": vertical,
        "claim_horizontal": horizontal,
        "claim_size": _canonical(q, maps["size"], _word_pattern(maps["size"])),
        "claim_shape": _canonical(q, maps["shape"], _word_pattern(maps["shape"])),
        "claim_count": count,
        "claim_relation": _canonical(q, maps["relation"], _word_pattern(maps["relation"])),
        "claim_terms": _joined(terms),
        "claim_foreign_terms": _joined(foreign),
        "claim_negation": q.str.contains(rf"(?i)\b(?:{_alternation(lex.negation)})\b").fill_null(
            False
        ),
    }


def _term_list(query: pl.Expr, lookup: dict[str, str]) -> pl.Expr:
    """Return the canonical terms found in the query, in order of first mention."""
    return query.str.extract_all(_word_pattern(lookup)).list.eval(
        pl.element()
        .str.to_lowercase()
        .str.replace_all(r"\s+", " ")
        .replace_strict(lookup, default=None, return_dtype=pl.String)
        .drop_nulls()
        .unique(maintain_order=True)
    )


def _foreign_terms(terms: pl.Expr, patterns: ClaimPatterns) -> pl.Expr:
    """Keep the terms that the row's modality does not list (nor the shared terms)."""
    lex = patterns.lexicon
    general = sorted(lex.terms.general)
    expr = pl.when(pl.lit(False)).then(terms)
    for modality in sorted(lex.terms.modalities):
        allowed = sorted(lex.modality_terms(modality))
        expr = expr.when(pl.col("modality") == modality).then(
            terms.list.eval(pl.element().filter(~pl.element().is_in(allowed)))
        )
    return expr.otherwise(terms.list.eval(pl.element().filter(~pl.element().is_in(general))))


def _joined(terms: pl.Expr) -> pl.Expr:
    text = terms.list.join(", ")
    return pl.when(text == "").then(pl.lit(None, pl.String)).otherwise(text)


def add_claims(
    samples: pl.DataFrame, patterns: ClaimPatterns, dataset_terms: Iterable[str] = ()
) -> pl.DataFrame:
    """Fill the claim columns of a sample table from its ``query`` and ``modality`` columns.

    ``dataset_terms`` are words the manifest itself declares (class names and their query
    words): a dataset's own classes are never foreign to it, whatever the lexicon lists.
    """
    expressions = claim_expressions(patterns)
    own = sorted({word.lower() for word in dataset_terms})
    if own:
        foreign = expressions["claim_foreign_terms"].str.split(", ").list.eval(
            pl.element().filter(~pl.element().is_in(own))
        )
        expressions["claim_foreign_terms"] = _joined(foreign)
    return samples.with_columns(
        [expr.cast(CLAIM_COLUMNS[name].dtype).alias(name) for name, expr in expressions.items()]
    )


def add_uniqueness(samples: pl.DataFrame, objects: pl.DataFrame) -> pl.DataFrame:
    """Set ``claims_unique``: no other object of the target's class fits every claim.

    ``objects`` contains the object rows of the batch's images with their cue columns and
    ``is_<relation>`` flags. Another object fits a claim when its cue has the claimed word
    (a null cue, for a value near a threshold, fits no claim, as in the cue stage's
    ``<cue>_unique``). A query without claims fits every object. Multi-object samples
    get null.
    """
    single = samples.filter(pl.col("task") != "multi").select(
        "sample_id", "image_key", "class", "object_id", *_CLAIM_CUES, "claim_relation"
    )
    others = objects.select(
        "image_key",
        "class",
        pl.col("object_id").alias("other_id"),
        *[pl.col(cue).alias(f"other_{cue}") for cue in _CLAIM_CUES.values()],
        *[pl.col(f"is_{r}").alias(f"other_is_{r}") for r in RELATIONS],
    )
    pairs = single.join(others, on=["image_key", "class"]).filter(
        pl.col("other_id") != pl.col("object_id")
    )
    fits = pl.lit(True)
    for claim, cue in _CLAIM_CUES.items():
        other = pl.col(f"other_{cue}")
        fits = fits & (pl.col(claim).is_null() | (other == pl.col(claim)).fill_null(False))
    relation_fits = pl.lit(False)
    for relation in RELATIONS:
        relation_fits = relation_fits | (
            (pl.col("claim_relation") == relation) & pl.col(f"other_is_{relation}").fill_null(False)
        )
    fits = fits & (pl.col("claim_relation").is_null() | relation_fits)
    confused = pairs.filter(fits).select("sample_id").unique()
    unique = (
        pl.when(pl.col("task") == "multi")
        .then(pl.lit(None, pl.Boolean))
        .otherwise(~pl.col("sample_id").is_in(confused.get_column("sample_id").to_list()))
    )
    return samples.with_columns(unique.alias("claims_unique"))
