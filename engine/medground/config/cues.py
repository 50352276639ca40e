"""Thresholds that turn geometry into categorical cue words (``rules/cues.yaml``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from medground.config.manifest import StrictModel


class SizeThresholds(StrictModel):
    """Upper bounds of each size word, as object area / image area."""

    tiny: float = Field(gt=0, lt=1, description="area fraction below which an object is tiny")
    small: float = Field(gt=0, lt=1)
    medium: float = Field(gt=0, lt=1, description="at or above this an object is large")
    margin: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="relative band around each bound where no size word is given, because "
        "an object near a bound could honestly be called either",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SizeThresholds:
        if not self.tiny < self.small < self.medium:
            raise ValueError(
                f"size bounds must increase: tiny {self.tiny} < small {self.small} < "
                f"medium {self.medium}"
            )
        return self


class PositionThresholds(StrictModel):
    """Grid lines and side margins, as fractions of the image width or height."""

    grid: tuple[float, float] = Field(
        (1 / 3, 2 / 3), description="the two inner grid lines, as fractions of width and height"
    )
    margin: float = Field(
        0.04,
        ge=0,
        lt=0.2,
        description="centroids closer than this to a grid line get no position word",
    )
    side_margin: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="centroids within this distance of the vertical midline get no side word",
    )


class ShapeThresholds(StrictModel):
    """Bounds of the shape words on eccentricity and solidity (both 0..1)."""

    irregular_max_solidity: float = Field(0.8, gt=0, le=1)
    regular_min_solidity: float = Field(0.9, gt=0, le=1)
    round_max_eccentricity: float = Field(0.6, gt=0, lt=1)
    oval_min_eccentricity: float = Field(0.65, gt=0, lt=1)
    oval_max_eccentricity: float = Field(0.9, gt=0, lt=1)
    elongated_min_eccentricity: float = Field(0.94, gt=0, lt=1)


class RelationThresholds(StrictModel):
    """Margins a relation must clear before a query may state it."""

    size_ratio: float = Field(
        1.3, ge=1, description="the largest must be this many times the area of the next"
    )
    position_margin: float = Field(
        0.08,
        ge=0,
        lt=1,
        description="the leftmost centroid must lead the next by this fraction of the width "
        "(height for upper and lower)",
    )


class CueThresholds(StrictModel):
    """All cue thresholds of one file."""

    version: int = 1
    size: SizeThresholds
    position: PositionThresholds = PositionThresholds()
    shape: ShapeThresholds = ShapeThresholds()
    relations: RelationThresholds = RelationThresholds()
