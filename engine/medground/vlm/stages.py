"""The VLM stages of a run: settings from manifest and command line, set-up, judging.

:func:`resolve_vlm_configs` merges a manifest's ``synthesizer:`` and ``judge:`` with the
``mgr run`` options, :func:`build_vlm_stages` builds the synthesiser and judge with one
reply cache in ``<run dir>/run.sqlite``, and :func:`judge_records` runs verification
stage 3 over a batch's records. A batch whose results a later run could improve (a call
failure worth retrying, or a cost cap stop) raises :class:`BatchIncomplete` so that the
runner does not commit it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medground.cache import ResponseCache
from medground.config.errors import ConfigError, Problem
from medground.config.loader import LoadedManifest, load_provider_file
from medground.config.manifest import JudgeSpec, VlmSynthesizerSpec
from medground.config.provider import (
    JudgeConfig,
    JudgeSettings,
    ProviderConfig,
    VlmSynthConfig,
    VlmSynthSettings,
)
from medground.extract import ImageResult
from medground.samples import target_cues
from medground.synth.base import DatasetInfo, QueryCandidate, Rejection
from medground.synth.vlm import VlmSynthesizer
from medground.verify.judge import JudgeOutcome, JudgeSample, VisualJudge
from medground.vlm.client import (
    RETRYABLE_RULE_IDS,
    CostCapReached,
    ProviderConfigError,
    VlmClient,
)
from medground.vlm.images import BoxXyxy
from medground.vlm.prompting import PromptTemplateError

logger = logging.getLogger(__name__)

# Provider settings that change replies, and so the records. The others (limits,
# retries, cost cap) may change between a stopped run and its rerun without starting over.
_REPLY_SETTINGS = (
    "model",
    "api_base",
    "temperature",
    "max_tokens",
    "max_image_side_px",
    "json_response",
    "extra_headers",
)


class BatchIncomplete(Exception):
    """A batch that must not be committed, because a rerun of the same command may finish it.

    Attributes:
        reason: ``cost_cap`` or ``call_failed``.
        message: What stopped the batch and what to do, for the command line and report.
    """

    def __init__(self, reason: Literal["cost_cap", "call_failed"], message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class VlmOverrides:
    """``mgr run`` options that replace the manifest's VLM settings.

    Attributes:
        synthesizer: ``template`` or ``vlm``; None keeps the manifest's kind, unless
            ``model`` is set, which selects ``vlm``.
        model: litellm model name of the synthesiser.
        api_base: Endpoint URL of every VLM stage of the run.
        judge_model: litellm model name of the judge; adds a judge when the manifest has none.
    """

    synthesizer: Literal["template", "vlm"] | None = None
    model: str | None = None
    api_base: str | None = None
    judge_model: str | None = None


@dataclass
class VlmStages:
    """The run's VLM synthesiser and judge, each None when not used, and their cache."""

    synth_config: VlmSynthConfig | None = None
    judge_config: JudgeConfig | None = None
    synthesizer: VlmSynthesizer | None = None
    judge: VisualJudge | None = None
    cache: ResponseCache | None = None
    prompt_sha256: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """Return the settings that change replies, for the run's resume fingerprint."""
        parts: dict[str, Any] = {}
        if self.synth_config is not None:
            parts["synthesis"] = {
                **_reply_settings(self.synth_config.provider),
                **self.synth_config.model_dump(include=set(VlmSynthSettings.model_fields)),
                "prompt_sha256": self.prompt_sha256.get("synthesis"),
            }
        if self.judge_config is not None:
            parts["judge"] = {
                **_reply_settings(self.judge_config.provider),
                **self.judge_config.model_dump(include=set(JudgeSettings.model_fields)),
                "prompt_sha256": self.prompt_sha256.get("judge"),
            }
        return parts

    def call_summary(self) -> list[dict[str, Any]]:
        """Sum the ledger's calls, tokens and cost per stage, model and outcome."""
        return self.cache.call_summary() if self.cache is not None else []

    def close(self) -> None:
        """Close the reply cache."""
        if self.cache is not None:
            self.cache.close()
            self.cache = None


def _reply_settings(provider: ProviderConfig) -> dict[str, Any]:
    return provider.model_dump(include=set(_REPLY_SETTINGS))


def _replace(provider: ProviderConfig, **changes: Any) -> ProviderConfig:
    """Return ``provider`` with ``changes`` applied and validated again."""
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return provider
    return ProviderConfig.model_validate({**provider.model_dump(), **changes})


def resolve_vlm_configs(
    loaded: LoadedManifest, overrides: VlmOverrides
) -> tuple[VlmSynthConfig | None, JudgeConfig | None]:
    """Merge the manifest's VLM settings with the command-line overrides.

    Returns:
        The synthesiser config (None for the template synthesiser) and the judge
        config (None without a judge).

    Raises:
        ConfigError: An override contradicts the manifest or lacks a model, a provider
            file is missing or invalid, or an overridden setting is invalid.
    """
    manifest = loaded.manifest
    spec = manifest.synthesizer
    kind = overrides.synthesizer or ("vlm" if overrides.model else spec.kind)
    if kind == "template" and overrides.model:
        raise ConfigError(
            [
                Problem(
                    loaded.file,
                    f"--model {overrides.model} sets the VLM synthesiser's model but "
                    "--synthesizer is 'template'; drop one of the two options",
                )
            ]
        )

    synth_config = None
    if kind == "vlm":
        if isinstance(spec, VlmSynthesizerSpec):
            provider = _spec_provider(loaded, spec, ("synthesizer",))
            settings = spec.model_dump(include=set(VlmSynthSettings.model_fields))
        elif overrides.model:
            provider = ProviderConfig(model=overrides.model)
            settings = {}
        else:
            raise ConfigError(
                [
                    loaded.source.problem(
                        ("synthesizer",),
                        "--synthesizer vlm needs a model: pass --model NAME (e.g. "
                        "openai/gpt-4o), or set synthesizer kind 'vlm' with its provider",
                    )
                ]
            )
        provider = _override(
            loaded,
            provider,
            "--model/--api-base",
            model=overrides.model,
            api_base=overrides.api_base,
        )
        synth_config = VlmSynthConfig(provider=provider, **settings)

    judge_config = None
    judge_spec = manifest.judge
    if judge_spec is not None or overrides.judge_model:
        if judge_spec is not None:
            provider = _spec_provider(loaded, judge_spec, ("judge",))
            settings = judge_spec.model_dump(include=set(JudgeSettings.model_fields))
        else:
            # A judge only named on the command line shares the synthesiser's endpoint
            # settings (key variable, price, limits), or starts from the defaults.
            base = synth_config.provider if synth_config is not None else None
            provider = base or ProviderConfig(model=str(overrides.judge_model))
            settings = {}
        provider = _override(
            loaded,
            provider,
            "--judge-model/--api-base",
            model=overrides.judge_model,
            api_base=overrides.api_base,
        )
        judge_config = JudgeConfig(provider=provider, **settings)

    if overrides.api_base and synth_config is None and judge_config is None:
        raise ConfigError(
            [
                Problem(
                    loaded.file,
                    f"--api-base {overrides.api_base} sets the endpoint of the VLM stages, but "
                    "this run has none; add --model NAME or --judge-model NAME, or drop "
                    "--api-base",
                )
            ]
        )
    return synth_config, judge_config


def _spec_provider(
    loaded: LoadedManifest, spec: VlmSynthesizerSpec | JudgeSpec, key: tuple[str, ...]
) -> ProviderConfig:
    if spec.provider is not None:
        return spec.provider
    # The manifest model guarantees one of the two.
    return load_provider_file(loaded, str(spec.provider_file), (*key, "provider_file"))


def _override(
    loaded: LoadedManifest, provider: ProviderConfig, options: str, **changes: Any
) -> ProviderConfig:
    try:
        return _replace(provider, **changes)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            [Problem(loaded.file, f"{options}: invalid value for the provider: {exc}")]
        ) from exc


def build_vlm_stages(
    loaded: LoadedManifest, overrides: VlmOverrides, run_dir: Path | None
) -> VlmStages:
    """Build the run's VLM synthesiser and judge, sharing one reply cache.

    Args:
        loaded: The manifest; its folder is searched for prompt templates before the
            built-in ``prompts/``.
        overrides: ``mgr run`` options that replace manifest settings.
        run_dir: The run folder, which contains ``run.sqlite``; None builds the stages
            without a cache (``mgr validate``).

    Raises:
        ConfigError: For invalid settings, a missing prompt template, an unset key
            variable or a model without a price.
    """
    synth_config, judge_config = resolve_vlm_configs(loaded, overrides)
    stages = VlmStages(synth_config=synth_config, judge_config=judge_config)
    if synth_config is None and judge_config is None:
        return stages

    if run_dir is not None:
        stages.cache = ResponseCache(run_dir / "run.sqlite")
    prompt_dirs = [loaded.file.parent.resolve()]
    try:
        if synth_config is not None:
            stages.synthesizer = _build(
                loaded,
                ("synthesizer",),
                lambda: VlmSynthesizer(synth_config, cache=stages.cache, prompt_dirs=prompt_dirs),
            )
            stages.prompt_sha256["synthesis"] = stages.synthesizer.prompt_sha256
        if judge_config is not None:
            client: VlmClient | None = None
            if (
                stages.synthesizer is not None
                and judge_config.provider == stages.synthesizer.config.provider
            ):
                # One endpoint, one set of limits: both stages queue at the same client.
                client = stages.synthesizer.client
            stages.judge = _build(
                loaded,
                ("judge",),
                lambda: VisualJudge(
                    judge_config, cache=stages.cache, prompt_dirs=prompt_dirs, client=client
                ),
            )
            stages.prompt_sha256["judge"] = stages.judge.template.sha256
    except ConfigError:
        stages.close()
        raise
    return stages


def _build(loaded: LoadedManifest, key: tuple[str, ...], make: Any) -> Any:
    try:
        return make()
    except PromptTemplateError as exc:
        raise ConfigError([loaded.source.problem((*key, "prompt_template"), str(exc))]) from exc
    except ProviderConfigError as exc:
        raise ConfigError([loaded.source.problem((*key, "provider"), str(exc))]) from exc


# -- batch stages ---------------------------------------------------------------------


def check_retryable(rejections: Iterable[Rejection], stage: str) -> None:
    """Raise :class:`BatchIncomplete` when a rejection is a call failure worth retrying.

    Such rejections are not final: committing them would keep a rerun from asking again.
    """
    retryable = [r for r in rejections if r.rule_id in RETRYABLE_RULE_IDS]
    if not retryable:
        return
    failures = Counter(r.rule_id for r in retryable)
    first = retryable[0]
    counts = ", ".join(f"{count} x {rule_id}" for rule_id, count in failures.most_common())
    hint = (
        "check the key variable named by provider.api_key_env"
        if "vlm.auth_failed" in failures
        else "check that the provider is reachable, or lower provider.requests_per_minute"
    )
    raise BatchIncomplete(
        "call_failed",
        f"{stage} calls failed ({counts}), e.g. for {first.key}: {first.message}; {hint}, "
        "then run the same command again (received replies are cached and not paid twice)",
    )


def cost_cap_message(stage: str, exc: CostCapReached) -> str:
    """Describe a cost cap stop for the command line and the report."""
    return (
        f"the {stage} stage reached the cost cap: spent ${exc.spent_usd:.4f} of "
        f"cost_cap_usd ${exc.cap_usd:.4f}; raise provider.cost_cap_usd and run the same "
        "command again to continue (cached replies are not paid twice)"
    )


def _box(obj: dict[str, Any]) -> list[int]:
    return [obj["x0"], obj["y0"], obj["x1"], obj["y1"]]


def _box_xyxy(obj: dict[str, Any]) -> BoxXyxy:
    return (obj["x0"], obj["y0"], obj["x1"], obj["y1"])


def synthesis_objects(res: ImageResult) -> tuple[dict[str, Any], ...]:
    """Return the image's objects as the VLM prompt shows them: id, class, box and cues.

    Only the cues a query may state are passed, not the raw measurements or the source
    file paths of the object rows.
    """
    objects = {o["object_id"]: o for o in res.objects}
    views = []
    for object_id, row in objects.items():
        cues = target_cues(objects, {"task": "single", "object_ids": [object_id]})
        cues["class_count"] = row.get("class_count")
        views.append(
            {
                "object_id": object_id,
                "class": row["class"],
                "bbox_xyxy": _box(row),
                "cues": {key: value for key, value in cues.items() if value is not None},
            }
        )
    return tuple(views)


def add_vlm_targets(results: Sequence[ImageResult], candidates: Sequence[QueryCandidate]) -> int:
    """Add a target to the image of each candidate whose objects no engine target has.

    A VLM may refer to objects of its own choice; the candidate then carries a
    ``target_id`` made of its object ids. The added target has ``source: vlm`` and the
    cues of its first object.

    Returns:
        The number of targets added.
    """
    by_key = {res.image_key: res for res in results}
    added = 0
    for candidate in candidates:
        res = by_key[candidate.image_key]
        if any(t["target_id"] == candidate.target_id for t in res.targets):
            continue
        objects = {o["object_id"]: o for o in res.objects}
        chosen = [objects[object_id] for object_id in candidate.object_ids]
        # NOTE: a target of several classes is filed under its first object's class, and
        # a 'multi' subset is still compared with the class count by the count rule.
        class_name = chosen[0]["class"]
        target: dict[str, Any] = {
            "image_key": res.image_key,
            "target_id": candidate.target_id,
            "task": candidate.task,
            "class": class_name,
            "object_ids": list(candidate.object_ids),
            "boxes": [_box(o) for o in chosen],
            "relation": None,
            "class_count": sum(1 for o in res.objects if o["class"] == class_name),
            "source": "vlm",
        }
        target["cues"] = target_cues(objects, target)
        res.targets.append(target)
        added += 1
    return added


def judge_records(
    judge: VisualJudge,
    records: Sequence[dict[str, Any]],
    results: Sequence[ImageResult],
    dataset: DatasetInfo,
) -> list[JudgeOutcome]:
    """Judge each record and write the verdict into ``record["verification"]["judge"]``.

    Every record gets its verdict, passed or failed; the caller drops the failed ones
    and records their ``judge`` rejections.

    Returns:
        One outcome per record, in record order.

    Raises:
        BatchIncomplete: The cost cap stopped the judge, or a call failed in a way a
            rerun may not repeat.
    """
    by_key = {res.image_key: res for res in results}
    samples = []
    for record in records:
        image_key = record["id"].rsplit("/", 2)[0]
        target_ids = {oid for target in record["targets"] for oid in target["object_ids"]}
        res = by_key.get(image_key)
        others = [] if res is None else res.objects
        samples.append(
            JudgeSample(
                sample_id=record["id"],
                image_path=Path(record["image"]["path"]),
                query=record["query"],
                target_boxes_xyxy=tuple(tuple(t["bbox_xyxy"]) for t in record["targets"]),
                other_boxes_xyxy=tuple(
                    _box_xyxy(o) for o in others if o["object_id"] not in target_ids
                ),
                image_key=image_key,
                dataset=dataset,
            )
        )

    try:
        outcomes = judge.judge(samples)
    except CostCapReached as exc:
        raise BatchIncomplete("cost_cap", cost_cap_message("judge", exc)) from exc
    check_retryable((r for outcome in outcomes for r in outcome.rejections), "judge")

    for record, outcome in zip(records, outcomes, strict=True):
        verdict = dict(outcome.verdict)
        # Whether the reply came from the cache differs between a resumed run and an
        # uninterrupted one, and records must not.
        verdict.pop("cached", None)
        verdict["prompt_sha256"] = judge.template.sha256
        record["verification"]["judge"] = verdict
    return outcomes
