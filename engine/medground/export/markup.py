"""How each vision-language model writes boxes in text: rendering for export, parsing for eval.

Sources for each markup (checked against public documentation and reference code):

- ``qwen2-vl``: ``<|object_ref_start|>phrase<|object_ref_end|>`` in the request and
  ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` in the response, coordinates on the 0..1000 grid
  of the original image (ms-swift ``docs/source_en/Customization/Custom-dataset.md``,
  "Grounding"; copies of Qwen's ``convert_to_qwen2vl_format`` helper, which QwenLM/Qwen3-VL
  issue 1486 points to, round ``x / W * 1000``).
- ``internvl``: request ``Please provide the bounding box coordinate of the region this
  sentence describes: <ref>phrase</ref>``, response ``<ref>phrase</ref><box>[[x1, y1, x2,
  y2]]</box>`` on the 0..1000 grid (InternVL ``internvl_chat/eval/refcoco/
  evaluate_grounding.py``, which divides by 1000 and multiplies by the image size).
- ``qwen3-vl``: JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`` on the 0..1000 grid
  (the Qwen3-VL README as quoted in QwenLM/Qwen3-VL issue 1741: "relative coordinates
  ranging from 0 to 1000").
- ``qwen2.5-vl``: the same JSON in absolute pixels of the image after the processor's
  :func:`~medground.boxes.smart_resize` (Qwen maintainers in QwenLM/Qwen2.5-VL issue 676:
  "absolute coordinates based on the actual input size of the image ... the size after
  processor"). The parser also reads bare ``[x1, y1, x2, y2]`` lists, which is how
  ms-swift's Qwen2.5-VL template renders ``<bbox>``.
- ``florence-2``: ``phrase<loc_x1><loc_y1><loc_x2><loc_y2>`` with bins 0..999
  (transformers ``models/florence2/processing_florence2.py``); the request uses the
  ``<OPEN_VOCABULARY_DETECTION>`` task token, which the processor expands to
  ``Locate {phrase} in the image.``
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medground import boxes as box_ops

_NUMBER = r"(-?\d+(?:\.\d+)?)"


class MarkupParseError(ValueError):
    """A model response with no box in the expected markup."""


@dataclass(frozen=True)
class Markup:
    """One model family's box markup and the coordinate space its numbers are in."""

    name: str
    space: str
    render_request: Callable[[str], str]
    render_response: Callable[[np.ndarray, Sequence[str], str], str]
    parse: Callable[[str], np.ndarray]


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- Qwen2-VL ------------------------------------------------------------------------------

_COMMA = r"\s*,\s*"
_QWEN2VL_BOX = re.compile(
    rf"<\|box_start\|>\s*\(\s*{_NUMBER}{_COMMA}{_NUMBER}\s*\){_COMMA}"
    rf"\(\s*{_NUMBER}{_COMMA}{_NUMBER}\s*\)\s*<\|box_end\|>"
)


def _qwen2vl_request(query: str) -> str:
    # MedGround queries are whole instructions ("Locate the polyp in ..."), so they are
    # sent as written; the reference tags mark the object phrase in the answer instead.
    return query


def _qwen2vl_response(coords: np.ndarray, labels: Sequence[str], query: str) -> str:
    return "".join(
        f"<|object_ref_start|>{label}<|object_ref_end|>"
        f"<|box_start|>({_format_number(x1)},{_format_number(y1)}),"
        f"({_format_number(x2)},{_format_number(y2)})<|box_end|>"
        for (x1, y1, x2, y2), label in zip(coords, labels, strict=True)
    )


def _qwen2vl_parse(text: str) -> np.ndarray:
    matches = _QWEN2VL_BOX.findall(text)
    if not matches:
        raise MarkupParseError("no <|box_start|>(x1,y1),(x2,y2)<|box_end|> found")
    return np.array(matches, dtype=np.float64)


# --- InternVL ------------------------------------------------------------------------------

_INTERNVL_BOX_BLOCK = re.compile(r"<box>(.*?)</box>", re.DOTALL)
_FOUR_NUMBERS = _COMMA.join([_NUMBER] * 4)
_BRACKETED_QUAD = re.compile(rf"\[\s*{_FOUR_NUMBERS}\s*\]")


def _internvl_request(query: str) -> str:
    return (
        "Please provide the bounding box coordinate of the region this sentence describes: "
        f"<ref>{query}</ref>"
    )


def _internvl_response(coords: np.ndarray, labels: Sequence[str], query: str) -> str:
    quads = ", ".join(
        "[" + ", ".join(_format_number(value) for value in row) + "]" for row in coords
    )
    return f"<ref>{query}</ref><box>[{quads}]</box>"


def _internvl_parse(text: str) -> np.ndarray:
    quads: list[tuple[str, ...]] = []
    for block in _INTERNVL_BOX_BLOCK.findall(text):
        quads.extend(_BRACKETED_QUAD.findall(block))
    if not quads:
        raise MarkupParseError("no <box>[[x1, y1, x2, y2]]</box> found")
    return np.array(quads, dtype=np.float64)


# --- Qwen2.5-VL and Qwen3-VL JSON --------------------------------------------------------

_JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_BBOX_2D = re.compile(rf'"bbox_2d"\s*:\s*\[\s*{_FOUR_NUMBERS}\s*\]')


def _json_request(query: str) -> str:
    return (
        f'Locate the region this sentence describes: "{query}". '
        "Report its bbox coordinates in JSON format."
    )


def _json_response(coords: np.ndarray, labels: Sequence[str], query: str) -> str:
    items = [
        json.dumps({"bbox_2d": [int(value) for value in row], "label": label})
        for row, label in zip(coords, labels, strict=True)
    ]
    return "```json\n[\n  " + ",\n  ".join(items) + "\n]\n```"


def _collect_bbox_2d(data: Any) -> list[list[float]]:
    if isinstance(data, dict):
        data = [data]
    found: list[list[float]] = []
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("bbox_2d"), list):
                values = item["bbox_2d"]
                if len(values) == 4 and all(
                    isinstance(value, int | float) and not isinstance(value, bool)
                    for value in values
                ):
                    found.append([float(value) for value in values])
    return found


def _collect_bare_boxes(data: Any) -> list[list[float]]:
    def is_quad(item: Any) -> bool:
        return (
            isinstance(item, list)
            and len(item) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)
        )

    if is_quad(data):
        return [[float(value) for value in data]]
    if isinstance(data, list) and data and all(is_quad(item) for item in data):
        return [[float(value) for value in item] for item in data]
    return []


def _json_parse(text: str) -> np.ndarray:
    fenced = _JSON_FENCE.search(text)
    body = fenced.group(1) if fenced else text
    try:
        data = json.loads(body)
        found = _collect_bbox_2d(data) or _collect_bare_boxes(data)
    except json.JSONDecodeError:
        # Generation often stops mid-list; read the complete bbox_2d entries that exist.
        found = [[float(value) for value in match] for match in _BBOX_2D.findall(body)]
    if not found:
        # ms-swift's Qwen2.5-VL template writes each <bbox> as a bare "[x1, y1, x2, y2]".
        found = [[float(value) for value in match] for match in _BRACKETED_QUAD.findall(body)]
    if not found:
        raise MarkupParseError('no [{"bbox_2d": [x1, y1, x2, y2], ...}] or [x1, y1, x2, y2] found')
    return np.array(found, dtype=np.float64)


# --- Florence-2 ----------------------------------------------------------------------------

_FLORENCE_QUAD = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
FLORENCE_TASK = "<OPEN_VOCABULARY_DETECTION>"


def _florence_request(query: str) -> str:
    return f"{FLORENCE_TASK}{query}"


def florence_phrase(label: str) -> str:
    """Return a label safe to precede location tokens (no ``<``, which ends the phrase)."""
    cleaned = label.replace("<", " ").replace(">", " ").strip()
    return cleaned or "region"


def _florence_response(coords: np.ndarray, labels: Sequence[str], query: str) -> str:
    tokens = box_ops.florence_loc_tokens(coords)
    phrase = florence_phrase(labels[0] if labels else "region")
    return phrase + "".join(tokens)


def _florence_parse(text: str) -> np.ndarray:
    matches = _FLORENCE_QUAD.findall(text)
    if not matches:
        raise MarkupParseError("no <loc_x1><loc_y1><loc_x2><loc_y2> found")
    return np.array(matches, dtype=np.float64)


MARKUPS: dict[str, Markup] = {
    "qwen2-vl": Markup("qwen2-vl", "norm1000", _qwen2vl_request, _qwen2vl_response, _qwen2vl_parse),
    "internvl": Markup(
        "internvl", "norm1000", _internvl_request, _internvl_response, _internvl_parse
    ),
    "qwen3-vl": Markup("qwen3-vl", "norm1000", _json_request, _json_response, _json_parse),
    "qwen2.5-vl": Markup("qwen2.5-vl", "resized", _json_request, _json_response, _json_parse),
    "florence-2": Markup(
        "florence-2", "florence-loc", _florence_request, _florence_response, _florence_parse
    ),
}


def get_markup(name: str) -> Markup:
    """Return the markup called ``name``.

    Raises:
        ValueError: naming the valid markups.
    """
    try:
        return MARKUPS[name]
    except KeyError:
        raise ValueError(
            f"unknown box markup {name!r}; valid markups: {', '.join(MARKUPS)}"
        ) from None
