"""The offline template synthesiser: cues to queries with Jinja phrasings, no network.

A phrasing is offered for a target only when every cue it ``requires`` is known, and for
a single object among several of its class only when one of those cues singles it out.
Choices are seeded by the run seed and the target id, so reruns write the same queries.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from medground.config.loader import load_phrasings, phrasing_environment
from medground.config.phrasings import Phrasing, PhrasingFile
from medground.synth.base import ClassInfo, QueryCandidate, Rejection, SynthesisRequest

logger = logging.getLogger(__name__)

NUMBER_WORDS = {
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    11: "eleven",
    12: "twelve",
}
_PAIR_WORDS = {
    "largest": "larger",
    "smallest": "smaller",
    "leftmost": "left",
    "rightmost": "right",
    "uppermost": "upper",
    "lowermost": "lower",
}
_CUE_KEYS = ("size", "position", "vertical", "image_side", "patient_side", "shape")
_UNIQUE_KEYS = {"size", "position", "image_side", "shape", "patient_side", "relation"}


class TemplateSynthesizer:
    """Writes queries from cues with the phrasings of one YAML file."""

    name = "template"

    def __init__(self, phrasing_path: Path, seed: int, queries_per_target: int = 1):
        self.path = phrasing_path
        text = phrasing_path.read_bytes()
        self.prompt_sha256 = hashlib.sha256(text).hexdigest()
        self.phrasings: PhrasingFile = load_phrasings(phrasing_path)
        self.seed = seed
        self.queries_per_target = queries_per_target
        env = phrasing_environment()
        self._templates = {
            p.id: env.from_string(p.text)
            for task in ("single", "multi", "relation")
            for p in getattr(self.phrasings, task)
        }
        self._conditions = {
            p.id: env.compile_expression(p.when)
            for task in ("single", "multi", "relation")
            for p in getattr(self.phrasings, task)
            if p.when
        }

    def synthesize(
        self, requests: Sequence[SynthesisRequest]
    ) -> tuple[list[QueryCandidate], list[Rejection]]:
        """Write ``queries_per_target`` queries for every target of every request."""
        candidates: list[QueryCandidate] = []
        rejections: list[Rejection] = []
        for request in requests:
            classes = {c.name: c for c in request.dataset.classes}
            for target in request.targets:
                key = f"{request.image_key}/{target['target_id']}"
                context = self._context(request, target, classes[target["class"]])
                options = self._eligible(target["task"], context, target)
                if not options:
                    rejections.append(
                        Rejection(
                            key=key,
                            stage="synthesis",
                            rule_id="synthesis.no_phrasing",
                            message=_no_phrasing_message(target, context),
                            image_key=request.image_key,
                        )
                    )
                    continue
                rng = random.Random(f"{self.seed}:{key}")
                count = min(self.queries_per_target, len(options))
                for phrasing in rng.sample(options, count):
                    try:
                        text = _tidy(self._templates[phrasing.id].render(**context))
                    except TemplateError as exc:
                        rejections.append(
                            Rejection(
                                key=key,
                                stage="synthesis",
                                rule_id="synthesis.template_error",
                                message=f"phrasing {phrasing.id} in {self.path} failed: {exc}",
                                image_key=request.image_key,
                            )
                        )
                        continue
                    candidates.append(
                        QueryCandidate(
                            image_key=request.image_key,
                            target_id=target["target_id"],
                            query=text,
                            task=target["task"],
                            object_ids=tuple(target["object_ids"]),
                            synthesizer=self.name,
                            prompt_sha256=self.prompt_sha256,
                            template_id=phrasing.id,
                        )
                    )
        return candidates, rejections

    def _context(
        self, request: SynthesisRequest, target: dict[str, Any], cls: ClassInfo
    ) -> dict[str, Any]:
        cues = target.get("cues") or {}
        count = int(target["class_count"])
        relation = target.get("relation")
        relation_word = None
        if relation:
            relation_word = _PAIR_WORDS[relation] if count == 2 else relation
        modality = request.dataset.modality
        context: dict[str, Any] = {
            "cls": cls.display,
            "cls_plural": cls.plural,
            "modality": modality,
            "modality_noun": self.phrasings.modality_nouns.get(modality, "image"),
            "anatomy": request.dataset.anatomy,
            "count": count,
            "count_word": NUMBER_WORDS.get(count, str(count)),
            "relation": relation,
            "relation_word": relation_word,
            "border": cues.get("touches_border"),
        }
        for key in _CUE_KEYS:
            context[key] = cues.get(key)
        return context

    def _eligible(
        self, task: str, context: dict[str, Any], target: dict[str, Any]
    ) -> list[Phrasing]:
        cues = target.get("cues") or {}
        unique = {k for k in _UNIQUE_KEYS if cues.get(f"{k}_unique")}
        if target.get("relation"):
            unique.add("relation")
        if cues.get("image_side_unique"):
            unique.add("patient_side")
        result = []
        for phrasing in getattr(self.phrasings, task):
            if any(context.get(cue) is None for cue in phrasing.requires):
                continue
            if task == "single" and context["count"] > 1:
                if not unique.intersection(phrasing.requires):
                    continue
            condition = self._conditions.get(phrasing.id)
            if condition is not None and not condition(**context):
                continue
            result.append(phrasing)
        return result


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.?!])", r"\1", text)
    return text[:1].upper() + text[1:]


def _no_phrasing_message(target: dict[str, Any], context: dict[str, Any]) -> str:
    known = ", ".join(
        f"{k.replace('_', ' ')} {context[k]}" for k in _CUE_KEYS if context.get(k) is not None
    ) or "none"
    if target["task"] == "single" and context["count"] > 1:
        return (
            f"no phrasing singles out {target['object_ids'][0]} among {context['count']} "
            f"objects of class {target['class']}: another object shares each of its known "
            f"cues ({known})"
        )
    return f"no {target['task']} phrasing has all its required cues known (known: {known})"
