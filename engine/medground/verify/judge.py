"""Verification stage 3: a VLM judges each query against the image with boxes drawn.

The judge sees the image with the target boxes drawn in one colour and, optionally, the
image's other candidate objects in a second colour, together with the query. It replies
with JSON (``schemas/vlm_judge_reply.schema.json``): whether the image supports the
query for the targets, whether the query singles them out, a confidence and a reason.
The :class:`~medground.config.provider.AcceptCriterion` of the config turns that reply
into a ``pass`` or ``fail`` verdict; every failure comes with ``judge`` rejections.
Without a judge configured, the caller records :func:`skipped_verdict` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medground.cache import ResponseCache
from medground.config.provider import AcceptCriterion, JudgeConfig
from medground.synth.base import DatasetInfo, Rejection
from medground.vlm.batch import gather_until_cap
from medground.vlm.client import CostCapReached, InvalidReply, VlmCallError, VlmClient
from medground.vlm.images import BoxXyxy, ImageLoadError, draw_boxes, image_part, prepare_image
from medground.vlm.prompting import invalid_reply_followup, load_prompt_template, parse_json_reply

logger = logging.getLogger(__name__)

STAGE = "judge"
REPLY_SCHEMA = "vlm_judge_reply"
# Colours are named in the prompt, so each pairs a PIL colour with the word the model reads.
TARGET_COLOUR = ("#00e000", "green")
OTHER_COLOUR = ("#ff40ff", "magenta")


def skipped_verdict(reason: str = "no judge configured") -> dict[str, Any]:
    """Return the judge verdict of a run without a visual judge."""
    return {"verdict": "skipped", "reason": reason}


@dataclass(frozen=True)
class JudgeSample:
    """One query to judge, with the boxes to draw.

    Attributes:
        sample_id: The sample's record id, used as rejection key.
        image_path: The 2D image the query is about.
        query: The referring expression.
        target_boxes_xyxy: Boxes of the referred objects, in original pixels, half-open.
        other_boxes_xyxy: Boxes of the image's other candidate objects.
        image_key: Key of the image, copied to rejections.
        dataset: Dataset facts for the prompt (modality, anatomy), when known.
    """

    sample_id: str
    image_path: Path
    query: str
    target_boxes_xyxy: tuple[BoxXyxy, ...]
    other_boxes_xyxy: tuple[BoxXyxy, ...] = ()
    image_key: str | None = None
    dataset: DatasetInfo | None = None


@dataclass(frozen=True)
class JudgeOutcome:
    """The judge's verdict on one sample.

    Attributes:
        sample_id: Id of the judged sample.
        verdict: ``{"verdict": "pass" | "fail", "reason", "model", "confidence", ...}``,
            the value of ``verification.judge`` in the record.
        rejections: ``judge`` rejections when the verdict is ``fail``; empty on ``pass``.
        cost_usd: Cost of the judge calls for this sample (the original cost when cached).
    """

    sample_id: str
    verdict: dict[str, Any]
    rejections: tuple[Rejection, ...]
    cost_usd: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the sample passed the judge."""
        return self.verdict["verdict"] == "pass"


def check_accept(reply: dict[str, Any], accept: AcceptCriterion) -> list[tuple[str, str]]:
    """List the accept criteria a judge reply fails, as ``(rule_id, message)`` pairs."""
    failures = []
    if accept.supported and not reply["supported"]:
        failures.append(
            (
                "judge.unsupported",
                "the judge found the query not supported by the image for the boxed targets",
            )
        )
    if accept.unique and not reply["unique"]:
        failures.append(
            (
                "judge.not_unique",
                "the judge found that the query does not single out the boxed targets",
            )
        )
    if reply["confidence"] < accept.min_confidence:
        failures.append(
            (
                "judge.low_confidence",
                f"judge confidence {reply['confidence']:.2f} is below "
                f"accept.min_confidence {accept.min_confidence:.2f}",
            )
        )
    return failures


class VisualJudge:
    """Checks queries against images with a VLM.

    Args:
        config: Provider, accept criterion, colours and template settings.
        cache: The run's reply cache; None disables caching.
        prompt_dirs: Folders searched for the template before the built-in ``prompts/``.
        client: A client to share with the synthesiser; by default one is built from
            ``config.provider``.

    Raises:
        PromptTemplateError: The template is missing or does not compile.
        ProviderConfigError: The key variable is unset or the model has no price.
    """

    def __init__(
        self,
        config: JudgeConfig,
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
        """litellm model name of the judge."""
        return self.config.provider.model

    def judge(self, samples: Sequence[JudgeSample]) -> list[JudgeOutcome]:
        """Judge a batch of samples; blocks until the batch is done.

        Runs :meth:`ajudge` in a new event loop, so it must not be called from a running
        loop.

        Raises:
            CostCapReached: The cost cap stopped the batch. ``completed`` contains the
                outcomes finished before the stop, ``unfinished`` the other sample ids.
        """
        return asyncio.run(self.ajudge(samples))

    async def ajudge(self, samples: Sequence[JudgeSample]) -> list[JudgeOutcome]:
        """Judge a batch of samples, up to ``max_concurrency`` at a time.

        Returns:
            One outcome per sample, in input order.

        Raises:
            CostCapReached: As for :meth:`judge`.
        """
        limit = 2 * self.config.provider.max_concurrency
        results, stop = await gather_until_cap(samples, self._judge_one, limit)
        outcomes = [result for result in results if result is not None]
        if stop is not None:
            unfinished = tuple(
                sample.sample_id
                for sample, result in zip(samples, results, strict=True)
                if result is None
            )
            raise CostCapReached(
                stop.spent_usd, stop.cap_usd, completed=outcomes, unfinished=unfinished
            ) from stop
        return outcomes

    # -- one sample -----------------------------------------------------------------

    async def _judge_one(self, sample: JudgeSample) -> JudgeOutcome:
        if not sample.target_boxes_xyxy:
            return self._failed(
                sample, "judge.no_targets", "the sample has no target boxes to show the judge"
            )
        try:
            # Decoding, drawing and PNG encoding run in a thread to keep the event loop free.
            messages = await asyncio.to_thread(self._build_messages, sample)
        except ImageLoadError as exc:
            return self._failed(sample, "vlm.image_unreadable", str(exc))

        cost = 0.0
        try:
            reply = await self.client.complete(
                stage=STAGE,
                request_key=sample.sample_id,
                messages=messages,
                parse=_parse_judge_reply,
            )
        except VlmCallError as exc:
            return self._failed(sample, exc.rule_id, exc.message)
        except InvalidReply as first:
            cost += first.cost_usd
            if not self.config.retry_on_invalid:
                return self._failed(
                    sample, "judge.invalid_reply", f"{first.rule_id}: {first.message}", cost
                )
            followup = [
                *messages,
                {"role": "assistant", "content": first.content or ""},
                {"role": "user", "content": invalid_reply_followup(first.rule_id, first.message)},
            ]
            try:
                reply = await self.client.complete(
                    stage=STAGE,
                    request_key=sample.sample_id,
                    messages=followup,
                    parse=_parse_judge_reply,
                )
            except VlmCallError as exc:
                return self._failed(sample, exc.rule_id, exc.message, cost)
            except InvalidReply as second:
                return self._failed(
                    sample,
                    "judge.invalid_reply",
                    f"{second.rule_id}: {second.message} (after one retry with the error quoted)",
                    cost + second.cost_usd,
                )

        cost += reply.cost_usd
        answer = reply.parsed
        failures = check_accept(answer, self.config.accept)
        verdict: dict[str, Any] = {
            "verdict": "fail" if failures else "pass",
            "reason": answer["reason"],
            "model": self.model,
            "confidence": answer["confidence"],
            "supported": answer["supported"],
            "unique": answer["unique"],
            "cached": reply.cached,
        }
        if not failures:
            return JudgeOutcome(sample.sample_id, verdict, (), cost)

        verdict["fired"] = [rule_id for rule_id, _ in failures]
        rejections = tuple(
            Rejection(
                key=sample.sample_id,
                stage=STAGE,
                rule_id=rule_id,
                message=f"{message}: {answer['reason']}",
                image_key=sample.image_key,
            )
            for rule_id, message in failures
        )
        return JudgeOutcome(sample.sample_id, verdict, rejections, cost)

    def _build_messages(self, sample: JudgeSample) -> list[dict[str, Any]]:
        prepared = prepare_image(sample.image_path, self.config.provider.max_image_side_px)
        picture = prepared.image
        draw_others = self.config.draw_other_candidates and bool(sample.other_boxes_xyxy)
        if draw_others:
            picture = draw_boxes(prepared, sample.other_boxes_xyxy, colour=OTHER_COLOUR[0])
        picture = draw_boxes(
            prepared, sample.target_boxes_xyxy, colour=TARGET_COLOUR[0], base=picture
        )

        dataset = sample.dataset
        prompt = self.template.render(
            {
                "dataset": {
                    "name": dataset.name if dataset else None,
                    "modality": dataset.modality if dataset else None,
                    "anatomy": dataset.anatomy if dataset else None,
                },
                "query": sample.query,
                "target_colour": TARGET_COLOUR[1],
                "other_colour": OTHER_COLOUR[1] if draw_others else None,
                "target_count": len(sample.target_boxes_xyxy),
                "other_count": len(sample.other_boxes_xyxy) if draw_others else 0,
            }
        )
        messages: list[dict[str, Any]] = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt.user},
                    image_part(picture),
                ],
            }
        )
        return messages

    def _failed(
        self, sample: JudgeSample, rule_id: str, message: str, cost_usd: float = 0.0
    ) -> JudgeOutcome:
        verdict = {
            "verdict": "fail",
            "reason": message,
            "model": self.model,
            "confidence": None,
            "fired": [rule_id],
        }
        rejection = Rejection(
            key=sample.sample_id,
            stage=STAGE,
            rule_id=rule_id,
            message=message,
            image_key=sample.image_key,
        )
        return JudgeOutcome(sample.sample_id, verdict, (rejection,), cost_usd)


def _parse_judge_reply(content: str) -> dict[str, Any]:
    return parse_json_reply(content, REPLY_SCHEMA)
