"""Measurements to categorical cue words, vectorised over a table of objects.

Every threshold comes from the cue file (``rules/cues.yaml`` by default). A value close
to a threshold gets no word at all (null), so a query never states a cue that an
observer could dispute.
"""

from __future__ import annotations

import polars as pl

from medground.config.cues import CueThresholds

SIZE_WORDS = ("tiny", "small", "medium-sized", "large")
GRID_VERTICAL = ("upper", "middle", "lower")
GRID_HORIZONTAL = ("left", "centre", "right")
SHAPE_WORDS = ("round", "oval", "elongated", "irregular")

_UNIQUE_CUES = ("size", "position", "image_side", "shape")


def _banded(
    column: pl.Expr, bounds: tuple[float, ...], words: tuple[str, ...], margin: pl.Expr | float
) -> pl.Expr:
    """Map a value to ``words`` split at ``bounds``; values near a bound become null."""
    near = pl.lit(False)
    for bound in bounds:
        near = near | ((column - bound).abs() < margin)
    expr = pl.when(near).then(pl.lit(None, pl.String))
    for bound, word in zip(bounds, words, strict=False):
        expr = expr.when(column < bound).then(pl.lit(word))
    return expr.otherwise(pl.lit(words[-1]))


def _plausible(
    column: pl.Expr, bounds: tuple[float, ...], words: tuple[str, ...], margins: list[pl.Expr]
) -> pl.Expr:
    """List the words an observer may use for a value: both neighbours near a bound."""
    expr = pl.when(pl.lit(False)).then(pl.concat_list([pl.lit(None, pl.String)]))
    for index, (bound, margin) in enumerate(zip(bounds, margins, strict=True)):
        near = (column - bound).abs() < margin
        expr = expr.when(near).then(
            pl.concat_list([pl.lit(words[index]), pl.lit(words[index + 1])])
        )
    for bound, word in zip(bounds, words, strict=False):
        expr = expr.when(column < bound).then(pl.concat_list([pl.lit(word)]))
    return expr.otherwise(pl.concat_list([pl.lit(words[-1])]))


def _unique_flags(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``<cue>_unique``: the object's word is not plausible for any other of its class.

    ``<cue>_plausible`` lists the words each object may be called by. An object near a
    band edge, or not measured, has several, so a borderline second polyp keeps "the
    medium-sized polyp" from counting as unique.
    """
    group = ["image_key", "class"]
    frame = frame.with_row_index("_row")
    for cue in _UNIQUE_CUES:
        counts = (
            frame.select(*group, "_row", pl.col(f"{cue}_plausible").alias("_word"))
            .explode("_word")
            .drop_nulls("_word")
            .unique()
            .group_by(*group, "_word")
            .agg(pl.len().alias("_sharing"))
        )
        frame = (
            frame.join(counts, left_on=[*group, cue], right_on=[*group, "_word"], how="left")
            .with_columns(
                (pl.col(cue).is_not_null() & (pl.col("_sharing") == 1)).alias(f"{cue}_unique")
            )
            .drop("_sharing")
        )
    return frame.sort("_row").drop("_row", *(f"{cue}_plausible" for cue in _UNIQUE_CUES))


def add_cues(objects: pl.DataFrame, thresholds: CueThresholds) -> pl.DataFrame:
    """Add cue columns to an object table.

    Needs the columns ``image_key``, ``class``, ``area_frac``, ``cx_frac``, ``cy_frac``,
    ``eccentricity``, ``solidity`` and ``orientation`` (the image's left/right convention).
    Adds ``size``, ``vertical``, ``horizontal``, ``position``, ``image_side``,
    ``patient_side``, ``shape`` and ``<cue>_unique`` for size, position, image_side, shape.
    """
    size, position, shape = thresholds.size, thresholds.position, thresholds.shape
    size_bounds = (size.tiny, size.small, size.medium)

    # Size bands are relative: an object within margin * bound of a bound gets no word.
    size_near = pl.lit(False)
    for bound in size_bounds:
        size_near = size_near | ((pl.col("area_frac") - bound).abs() < size.margin * bound)
    size_expr = pl.when(size_near).then(pl.lit(None, pl.String))
    for bound, word in zip(size_bounds, SIZE_WORDS, strict=False):
        size_expr = size_expr.when(pl.col("area_frac") < bound).then(pl.lit(word))
    size_expr = size_expr.otherwise(pl.lit(SIZE_WORDS[-1]))

    grid = tuple(position.grid)
    vertical = _banded(pl.col("cy_frac"), grid, GRID_VERTICAL, position.margin)
    horizontal = _banded(pl.col("cx_frac"), grid, GRID_HORIZONTAL, position.margin)

    image_side = (
        pl.when(pl.col("cx_frac") < 0.5 - position.side_margin)
        .then(pl.lit("left"))
        .when(pl.col("cx_frac") > 0.5 + position.side_margin)
        .then(pl.lit("right"))
        .otherwise(pl.lit(None, pl.String))
    )
    opposite = (
        pl.when(pl.col("image_side") == "left").then(pl.lit("right")).otherwise(pl.lit("left"))
    )
    patient_side = (
        pl.when(pl.col("image_side").is_null() | (pl.col("orientation") == "unknown"))
        .then(pl.lit(None, pl.String))
        .when(pl.col("orientation") == "radiological")
        .then(opposite)
        .otherwise(pl.col("image_side"))
    )

    ecc, sol = pl.col("eccentricity"), pl.col("solidity")
    shape_expr = (
        pl.when(ecc.is_null() | sol.is_null())
        .then(pl.lit(None, pl.String))
        .when(sol < shape.irregular_max_solidity)
        .then(pl.lit("irregular"))
        .when(sol < shape.regular_min_solidity)
        .then(pl.lit(None, pl.String))
        .when(ecc <= shape.round_max_eccentricity)
        .then(pl.lit("round"))
        .when((ecc >= shape.oval_min_eccentricity) & (ecc <= shape.oval_max_eccentricity))
        .then(pl.lit("oval"))
        .when(ecc >= shape.elongated_min_eccentricity)
        .then(pl.lit("elongated"))
        .otherwise(pl.lit(None, pl.String))
    )

    with_cues = objects.with_columns(
        size=size_expr,
        vertical=vertical,
        horizontal=horizontal,
        image_side=image_side,
        shape=shape_expr,
    ).with_columns(
        position=pl.when(pl.col("vertical").is_null() | pl.col("horizontal").is_null())
        .then(pl.lit(None, pl.String))
        .when((pl.col("vertical") == "middle") & (pl.col("horizontal") == "centre"))
        .then(pl.lit("centre"))
        .otherwise(pl.concat_str([pl.col("vertical"), pl.col("horizontal")], separator=" ")),
        patient_side=patient_side,
    )
    size_words = _plausible(
        pl.col("area_frac"), size_bounds, SIZE_WORDS, [size.margin * b for b in size_bounds]
    )
    grid_margins = [position.margin] * len(grid)
    vertical_words = _plausible(pl.col("cy_frac"), grid, GRID_VERTICAL, grid_margins)
    horizontal_words = _plausible(pl.col("cx_frac"), grid, GRID_HORIZONTAL, grid_margins)
    position_words = pl.concat_list(
        [
            pl.concat_str([vertical_words.list.get(v), horizontal_words.list.get(h)], separator=" ")
            for v in (0, -1)
            for h in (0, -1)
        ]
    ).list.eval(pl.element().replace("middle centre", "centre"))
    with_plausible = with_cues.with_columns(
        size_plausible=size_words,
        position_plausible=position_words,
        image_side_plausible=pl.when(pl.col("image_side").is_null())
        .then(pl.concat_list([pl.lit("left"), pl.lit("right")]))
        .otherwise(pl.concat_list([pl.col("image_side")])),
        # Unmeasured or borderline shapes might be called by any shape word.
        shape_plausible=pl.when(pl.col("shape").is_null())
        .then(pl.concat_list([pl.lit(word) for word in SHAPE_WORDS]))
        .otherwise(pl.concat_list([pl.col("shape")])),
    )
    return _unique_flags(with_plausible)
