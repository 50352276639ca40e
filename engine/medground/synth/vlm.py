"""The VLM synthesiser: a vision-language model writes referring queries for an image.

For each :class:`SynthesisRequest` the synthesiser renders the Jinja prompt with the
dataset, the image's objects (ids, classes, boxes, cues) and the engine's suggested
targets. It attaches the image, plus a copy with numbered boxes when set-of-marks is on.
The model must reply with JSON that names, for each query, the ids of the objects it
refers to. Replies are validated against ``schemas/vlm_query_reply.schema.json`` and
against the image's object ids. After an invalid reply the request is sent once more
with the error quoted when ``retry_on_invalid`` is set. Otherwise, or when the second
reply is invalid too, the reply becomes a ``format`` rejection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medground.cache import ResponseCache
from medground.config.provider import VlmSynthConfig
from medground.synth.base import QueryCandidate, Rejection, SynthesisRequest
from medground.vlm.batch import gather_until_cap
from medground.vlm.client import ChatReply, CostCapReached, InvalidReply, VlmCallError, VlmClient
from medground.vlm.images import ImageLoadError, draw_boxes, image_part, prepare_image
from medground.vlm.prompting import (
    invalid_reply_followup,
    load_prompt_template,
    parse_json_reply,
)

logger = logging.getLogger(__name__)

STAGE = "synthesis"
REPLY_SCHEMA = "vlm_query_reply"
MARK_COLOUR = "#ffd400"

# Object dict keys that are not cues, when an object carries its cues as flat columns.
_OBJECT_BASE_KEYS = frozenset({"object_id", "class", "bbox_xyxy", "cues", "image_key"})

# Number of object ids a query of each task may name: (minimum, maximum or None).
_TASK_ID_COUNTS: dict[str, tuple[int, int | None]] = {
    "single": (1, 1),
    "multi": (2, None),
    "relation": (1, None),
}


@dataclass(frozen=True)
class _QueryProblem:
    index: int
    rule_id: str
    message: str


@dataclass(frozen=True)
class _ParsedQueries:
    """Queries of a reply that passed every check, with their index in the reply."""

    queries: tuple[tuple[int, dict[str, Any]], ...]


def _json_safe(value: Any) -> Any:
    """Convert numpy values and tuples so that the prompt's ``tojson`` filter accepts them."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _cues_of(row: dict[str, Any]) -> dict[str, Any]:
    cues = row.get("cues")
    if isinstance(cues, dict):
        return _json_safe(cues)
    return _json_safe(
        {
            key: value
            for key, value in row.items()
            if key not in _OBJECT_BASE_KEYS and key not in {"target_id", "task", "object_ids"}
        }
    )


class VlmSynthesizer:
    """Writes referring queries with a VLM through litellm.

    Args:
        config: Model, prompt template, set-of-marks, retry and query count settings.
        cache: The run's reply cache (``ResponseCache(<run_dir>/run.sqlite)``); None
            disables caching and therefore resuming without paying again.
        prompt_dirs: Folders searched for the template before the built-in ``prompts/``,
            e.g. the folder of a manifest that names its own template.
        client: A client to share with the judge (common limits and cost cap); by
            default one is built from ``config.provider``.

    Raises:
        PromptTemplateError: The template is missing or does not compile.
        ProviderConfigError: The key variable is unset or the model has no price.
    """

    name = "vlm"

    def __init__(
        self,
        config: VlmSynthConfig,
        *,
        cache: ResponseCache | None = None,
        prompt_dirs: Sequence[Path] = (),
        client: VlmClient | None = None,
    ) -> None:
        self.config = config
        self.template = load_prompt_template(config.prompt_template, prompt_dirs)
        self.client = client or VlmClient(config.provider, cache=cache)

    @property
    def model(self) -> str:
        """litellm model name that writes the queries."""
        return self.config.provider.model

    @property
    def prompt_sha256(self) -> str:
        """sha256 of the prompt template source, recorded on every candidate."""
        return self.template.sha256

    def synthesize(
        self, requests: Sequence[SynthesisRequest]
    ) -> tuple[list[QueryCandidate], list[Rejection]]:
        """Write queries for a batch of images; blocks until the batch is done.

        Runs :meth:`asynthesize` in a new event loop, so it must not be called from a
        running loop; async callers use :meth:`asynthesize`.

        Raises:
            CostCapReached: The cost cap stopped the batch. ``completed`` contains the
                ``(candidates, rejections)`` finished before the stop, and ``unfinished``
                the image keys that were not synthesised.
        """
        return asyncio.run(self.asynthesize(requests))

    async def asynthesize(
        self, requests: Sequence[SynthesisRequest]
    ) -> tuple[list[QueryCandidate], list[Rejection]]:
        """Write queries for a batch of images, up to ``max_concurrency`` at a time.

        Raises:
            CostCapReached: As for :meth:`synthesize`.
        """
        limit = 2 * self.config.provider.max_concurrency
        results, stop = await gather_until_cap(requests, self._synthesize_one, limit)

        candidates: list[QueryCandidate] = []
        rejections: list[Rejection] = []
        unfinished: list[str] = []
        for request, result in zip(requests, results, strict=True):
            if result is None:
                unfinished.append(request.image_key)
                continue
            candidates.extend(result[0])
            rejections.extend(result[1])

        if stop is not None:
            raise CostCapReached(
                stop.spent_usd,
                stop.cap_usd,
                completed=(candidates, rejections),
                unfinished=tuple(unfinished),
            ) from stop
        return candidates, rejections

    # -- one image ------------------------------------------------------------------

    async def _synthesize_one(
        self, request: SynthesisRequest
    ) -> tuple[list[QueryCandidate], list[Rejection]]:
        try:
            # Decoding, resizing and PNG encoding run in a thread to keep the event loop free.
            messages = await asyncio.to_thread(self._build_messages, request)
        except ImageLoadError as exc:
            return [], [self._reject(request, STAGE, "vlm.image_unreadable", str(exc))]
        if isinstance(messages, Rejection):
            return [], [messages]

        parse = functools.partial(self._parse_reply, request)
        try:
            reply = await self.client.complete(
                stage=STAGE, request_key=request.image_key, messages=messages, parse=parse
            )
            return self._candidates(request, reply, reply.cost_usd, retried=False), []
        except VlmCallError as exc:
            return [], [self._reject(request, STAGE, exc.rule_id, exc.message)]
        except InvalidReply as first:
            if not self.config.retry_on_invalid:
                return self._invalid_result(request, first, first.cost_usd, retried=False)
            invalid = first

        logger.debug(
            "asking again for %s after an invalid reply: %s", request.image_key, invalid.message
        )
        followup = [
            *messages,
            {"role": "assistant", "content": invalid.content or ""},
            {"role": "user", "content": invalid_reply_followup(invalid.rule_id, invalid.message)},
        ]
        try:
            reply = await self.client.complete(
                stage=STAGE, request_key=request.image_key, messages=followup, parse=parse
            )
        except VlmCallError as exc:
            return [], [self._reject(request, STAGE, exc.rule_id, exc.message)]
        except InvalidReply as second:
            return self._invalid_result(
                request, second, invalid.cost_usd + second.cost_usd, retried=True
            )
        return self._candidates(request, reply, invalid.cost_usd + reply.cost_usd, retried=True), []

    def _build_messages(self, request: SynthesisRequest) -> list[dict[str, Any]] | Rejection:
        prepared = prepare_image(request.image_path, self.config.provider.max_image_side_px)
        height, width = prepared.original_hw
        if (width, height) != (request.width, request.height):
            return self._reject(
                request,
                STAGE,
                "vlm.image_size_mismatch",
                f"{request.image_path} is {width}x{height} pixels but the request says "
                f"{request.width}x{request.height}; boxes would not match the image",
            )

        prompt = self.template.render(self._context(request))
        content: list[dict[str, Any]] = [
            {"type": "text", "text": prompt.user},
            image_part(prepared.image),
        ]
        if self.config.set_of_marks:
            boxes = [tuple(obj["bbox_xyxy"]) for obj in request.objects]
            labels = [str(number) for number in range(1, len(boxes) + 1)]
            marked = draw_boxes(prepared, boxes, colour=MARK_COLOUR, labels=labels)
            content.append(image_part(marked))

        messages: list[dict[str, Any]] = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": content})
        return messages

    def _context(self, request: SynthesisRequest) -> dict[str, Any]:
        dataset = request.dataset
        displays = {info.name: info.display for info in dataset.classes}
        objects = []
        for number, row in enumerate(request.objects, start=1):
            view: dict[str, Any] = {
                "object_id": str(row["object_id"]),
                "class": row["class"],
                "class_display": displays.get(row["class"], row["class"]),
                "bbox_xyxy": _json_safe(row["bbox_xyxy"]),
                "cues": _cues_of(row),
            }
            if self.config.set_of_marks:
                view["mark"] = number
            objects.append(view)
        targets = [
            {
                "target_id": str(row["target_id"]),
                "task": row["task"],
                "class": row["class"],
                "object_ids": [str(object_id) for object_id in row["object_ids"]],
                "cues": _cues_of(row),
            }
            for row in request.targets
        ]
        return {
            "dataset": {
                "name": dataset.name,
                "modality": dataset.modality,
                "anatomy": dataset.anatomy,
                "orientation": dataset.orientation,
                "classes": [
                    {"name": c.name, "display": c.display, "plural": c.plural}
                    for c in dataset.classes
                ],
            },
            "image": {"key": request.image_key, "width": request.width, "height": request.height},
            "objects": objects,
            "targets": targets,
            "queries_per_image": self.config.queries_per_image,
            "set_of_marks": self.config.set_of_marks,
        }

    # -- replies --------------------------------------------------------------------

    def _parse_reply(self, request: SynthesisRequest, content: str) -> _ParsedQueries:
        data = parse_json_reply(content, REPLY_SCHEMA)
        known_ids = {str(row["object_id"]) for row in request.objects}

        valid: list[tuple[int, dict[str, Any]]] = []
        problems: list[_QueryProblem] = []
        for index, query in enumerate(data["queries"]):
            problem = self._check_query(index, query, known_ids)
            if problem is None:
                valid.append((index, query))
            else:
                problems.append(problem)

        if problems:
            message = "; ".join(f"query {p.index}: {p.message}" for p in problems)
            raise InvalidReply(
                problems[0].rule_id,
                message,
                partial=(_ParsedQueries(tuple(valid)), tuple(problems)),
            )
        return _ParsedQueries(tuple(valid))

    @staticmethod
    def _check_query(
        index: int, query: dict[str, Any], known_ids: set[str]
    ) -> _QueryProblem | None:
        object_ids = query["object_ids"]
        unknown = [object_id for object_id in object_ids if object_id not in known_ids]
        if unknown:
            return _QueryProblem(
                index,
                "format.unknown_object_id",
                f"object_ids {unknown} are not objects of this image; valid ids: "
                f"{sorted(known_ids)}",
            )
        minimum, maximum = _TASK_ID_COUNTS[query["task"]]
        count = len(object_ids)
        if count < minimum or (maximum is not None and count > maximum):
            expected = f"exactly {minimum}" if minimum == maximum else f"at least {minimum}"
            return _QueryProblem(
                index,
                "format.task_mismatch",
                f"task '{query['task']}' needs {expected} object id(s), got {count}",
            )
        return None

    def _candidates(
        self,
        request: SynthesisRequest,
        reply: ChatReply[_ParsedQueries],
        cost_usd: float,
        *,
        retried: bool,
    ) -> list[QueryCandidate]:
        return self._make_candidates(
            request, reply.parsed, cost_usd, retried=retried, cache_hit=reply.cached
        )

    def _make_candidates(
        self,
        request: SynthesisRequest,
        parsed: _ParsedQueries,
        cost_usd: float,
        *,
        retried: bool,
        cache_hit: bool,
    ) -> list[QueryCandidate]:
        queries = list(parsed.queries)
        if len(queries) > self.config.queries_per_image:
            logger.debug(
                "%s: kept the first %d of %d queries",
                request.image_key,
                self.config.queries_per_image,
                len(queries),
            )
            queries = queries[: self.config.queries_per_image]
        if not queries:
            return []

        targets_by_ids = {
            frozenset(str(object_id) for object_id in row["object_ids"]): str(row["target_id"])
            for row in request.targets
        }
        share = cost_usd / len(queries)
        candidates = []
        for index, query in queries:
            object_ids = tuple(query["object_ids"])
            engine_target = targets_by_ids.get(frozenset(object_ids))
            candidates.append(
                QueryCandidate(
                    image_key=request.image_key,
                    target_id=engine_target or "+".join(sorted(object_ids)),
                    query=query["query"].strip(),
                    task=query["task"],
                    object_ids=object_ids,
                    synthesizer=self.name,
                    model=self.model,
                    prompt_sha256=self.prompt_sha256,
                    cost_usd=share,
                    extra={
                        "query_index": index,
                        "target_source": "engine" if engine_target else "vlm",
                        "prompt_template": self.template.name,
                        "cache_hit": cache_hit,
                        "retried_invalid": retried,
                    },
                )
            )
        return candidates

    def _invalid_result(
        self, request: SynthesisRequest, error: InvalidReply, cost_usd: float, *, retried: bool
    ) -> tuple[list[QueryCandidate], list[Rejection]]:
        suffix = " (after one retry with the error quoted)" if retried else ""
        if error.partial is None:
            return [], [self._reject(request, "format", error.rule_id, f"{error.message}{suffix}")]

        parsed, problems = error.partial
        candidates = self._make_candidates(
            request, parsed, cost_usd, retried=retried, cache_hit=False
        )
        rejections = [
            self._reject(
                request,
                "format",
                problem.rule_id,
                f"{problem.message}{suffix}",
                key=f"{request.image_key}/q{problem.index}",
            )
            for problem in problems
        ]
        return candidates, rejections

    @staticmethod
    def _reject(
        request: SynthesisRequest, stage: str, rule_id: str, message: str, key: str | None = None
    ) -> Rejection:
        return Rejection(
            key=key or request.image_key,
            stage=stage,
            rule_id=rule_id,
            message=message,
            image_key=request.image_key,
        )
