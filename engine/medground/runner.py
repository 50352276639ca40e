"""Compile a manifest into stages and run them over the dataset in batches.

Stages per batch: load and objects (per image, :mod:`medground.extract`), cues
(vectorised over the batch's objects), synthesis, format check, rules (vectorised over
the batch's samples), judge. Each finished batch is committed to ``run.sqlite``; the
output files are written from there once all batches are done.

A batch that a VLM stage could not finish (the cost cap, or a call failure that a later
run may not meet again, see :data:`medground.vlm.client.RETRYABLE_RULE_IDS`) is not
committed. The run then stops, writes the outputs of the batches committed so far and
reports the reason. The same command run again resumes at that batch, and reads every
reply received so far from the reply cache in ``run.sqlite``.

The per-image stages run on an executor (:mod:`medground.executors`): in this process,
in a local process pool or on Dask. While the main process runs the batch-wide stages of
one batch, the executor already works on the next one, so at most two batches of image
results are in memory at a time, whatever the dataset size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import polars as pl

from medground import __version__
from medground.config.cues import CueThresholds
from medground.config.errors import ConfigError, Problem
from medground.config.loader import (
    LoadedManifest,
    load_cues,
    load_lexicon,
    load_manifest,
    resolve_declared_file,
)
from medground.config.manifest import TemplateSynthesizerSpec
from medground.cues import add_cues
from medground.executors import (
    Executor,
    ExecutorKind,
    InlineExecutor,
    default_workers,
    make_executor,
)
from medground.extract import ImageResult, image_key_for, process_items
from medground.io.pairing import Discovery, ImageItem, discover
from medground.progress import StageProgress, stderr_is_terminal
from medground.resources import load_schema
from medground.samples import build_record, sample_row, target_cues
from medground.split import assign_splits
from medground.store import RunStore, remove_stray_temporaries
from medground.synth.base import ClassInfo, DatasetInfo, SynthesisRequest, Synthesizer
from medground.synth.template import TemplateSynthesizer
from medground.targets import RELATIONS
from medground.verify.claims import ClaimPatterns, add_claims, add_uniqueness
from medground.verify.columns import table_schema
from medground.verify.format import RecordChecker
from medground.verify.rules import RuleSet, evaluate, load_rules
from medground.vlm.client import CostCapReached
from medground.vlm.stages import (
    BatchIncomplete,
    VlmOverrides,
    VlmStages,
    add_vlm_targets,
    build_vlm_stages,
    check_retryable,
    cost_cap_message,
    judge_records,
    synthesis_objects,
)

logger = logging.getLogger(__name__)


class RunError(Exception):
    """A run that cannot start or continue, with what to do about it."""


@dataclass(frozen=True)
class RunOptions:
    """Settings of one ``mgr run`` that are not in the manifest."""

    out_dir: Path = Path("out")
    root: Path | None = None
    limit: int | None = None
    seed: int | None = None
    batch_size: int = 256
    previews: bool = True
    preview_count: int = 24
    workers: int | None = None
    executor: ExecutorKind = "local"
    scheduler: str | None = None
    progress: bool | None = None
    synthesizer: Literal["template", "vlm"] | None = None
    model: str | None = None
    api_base: str | None = None
    judge_model: str | None = None

    @property
    def vlm_overrides(self) -> VlmOverrides:
        """The options that replace the manifest's synthesiser and judge settings."""
        return VlmOverrides(self.synthesizer, self.model, self.api_base, self.judge_model)

    @property
    def worker_count(self) -> int:
        """Worker processes for the per-image stages; ``None`` means all cores."""
        return self.workers if self.workers is not None else default_workers()

    @property
    def show_progress(self) -> bool:
        """Draw progress bars; ``None`` means only when stderr is a terminal."""
        return self.progress if self.progress is not None else stderr_is_terminal()


@dataclass
class Pipeline:
    """Everything a run needs, loaded and checked before any image is read."""

    loaded: LoadedManifest
    cues: CueThresholds
    rules: RuleSet
    claims: ClaimPatterns
    synthesizer: Synthesizer
    declared_files: dict[str, Path]
    seed: int
    record_checker: RecordChecker = field(repr=False)
    vlm: VlmStages = field(default_factory=VlmStages)

    def close(self) -> None:
        """Close the VLM reply cache, if the run has one."""
        self.vlm.close()

    @property
    def dataset_terms(self) -> list[str]:
        """Words the manifest declares for its classes: names, query words and their parts."""
        words: list[str] = []
        for spec in self.loaded.manifest.classes:
            for phrase in (spec.name.replace("_", " "), spec.display_name, spec.plural_name):
                words.append(phrase)
                words.extend(phrase.split())
        return words

    @property
    def dataset(self) -> DatasetInfo:
        """What a synthesiser may know about the dataset."""
        manifest = self.loaded.manifest
        return DatasetInfo(
            name=manifest.name,
            modality=manifest.modality,
            anatomy=manifest.anatomy,
            classes=tuple(
                ClassInfo(c.name, c.display_name, c.plural_name) for c in manifest.classes
            ),
            orientation=manifest.orientation,
        )


def load_pipeline(
    manifest_path: Path,
    root: Path | None = None,
    seed: int | None = None,
    *,
    out_dir: Path | None = None,
    overrides: VlmOverrides | None = None,
) -> Pipeline:
    """Load a manifest with its cue, rule, phrasing and prompt files and check them all.

    Args:
        manifest_path: The dataset manifest.
        root: Dataset folder replacing the manifest's ``root``.
        seed: Seed replacing the manifest's ``seed``.
        out_dir: Output folder of the run; the VLM reply cache is
            ``<out_dir>/<dataset>/run.sqlite``. None builds the VLM stages without a
            cache, for checking a manifest.
        overrides: ``mgr run`` options replacing the manifest's synthesiser and judge.

    Raises:
        ConfigError: listing the problems of every file that failed.

    The caller closes the returned pipeline (:meth:`Pipeline.close`).
    """
    loaded = load_manifest(manifest_path, root)
    manifest = loaded.manifest
    problems: list[Problem] = []
    declared: dict[str, Path] = {}

    def attempt(label: str, action: Any) -> Any:
        try:
            return action()
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    document = loaded.source
    cues_path = attempt(
        "cues",
        lambda: resolve_declared_file(
            manifest.cues, "rules", loaded.file, (document, ("cues",))
        ),
    )
    cues = attempt("cues", lambda: load_cues(cues_path)) if cues_path else None
    rule_paths = [
        attempt(
            "rules",
            lambda n=name, i=index: resolve_declared_file(
                n, "rules", loaded.file, (document, ("rules", i))
            ),
        )
        for index, name in enumerate(manifest.rules)
    ]
    lexicon_path = attempt(
        "lexicon",
        lambda: resolve_declared_file(
            manifest.lexicon, "rules", loaded.file, (document, ("lexicon",))
        ),
    )
    lexicon = attempt("lexicon", lambda: load_lexicon(lexicon_path)) if lexicon_path else None
    rules = None
    if all(rule_paths):
        rules = attempt("rules", lambda: load_rules(rule_paths))
    run_seed = manifest.seed if seed is None else seed
    run_dir = out_dir / manifest.name if out_dir is not None else None
    vlm = attempt("vlm", lambda: build_vlm_stages(loaded, overrides or VlmOverrides(), run_dir))
    synthesizer: Synthesizer | None = None
    phrasing_path = None
    if vlm is not None and vlm.synthesizer is not None:
        synthesizer = vlm.synthesizer
    else:
        # The template synthesiser, also when --synthesizer template overrides a VLM manifest.
        spec = manifest.synthesizer
        template = (
            spec
            if isinstance(spec, TemplateSynthesizerSpec)
            else TemplateSynthesizerSpec.model_validate({})
        )
        phrasing_path = attempt(
            "phrasings",
            lambda: resolve_declared_file(
                template.phrasings, "prompts", loaded.file, (document, ("synthesizer", "phrasings"))
            ),
        )
        if phrasing_path:
            synthesizer = attempt(
                "phrasings",
                lambda: TemplateSynthesizer(phrasing_path, run_seed, template.queries_per_target),
            )
    if problems:
        if vlm is not None:
            vlm.close()
        raise ConfigError(problems)
    # Every loader returned a value when no problem was recorded; the asserts tell mypy so.
    assert cues is not None
    assert rules is not None
    assert synthesizer is not None
    assert lexicon is not None
    assert vlm is not None
    declared["cues"] = cues_path
    declared["lexicon"] = lexicon_path
    if phrasing_path is not None:
        declared["phrasings"] = phrasing_path
    for index, path in enumerate(rule_paths):
        declared[f"rules[{index}]"] = path
    checker = RecordChecker(load_schema("record"))
    claims = ClaimPatterns.from_lexicon(lexicon)
    return Pipeline(loaded, cues, rules, claims, synthesizer, declared, run_seed, checker, vlm=vlm)


@dataclass
class RunSummary:
    """Summary of a finished run: counts, timing and the output folder."""

    out: Path
    images: int
    accepted: int
    rejected: int
    seconds: float
    resumed_batches: int
    stopped: str | None = None
    sources: int = 0
    volumes: bool = False
    rejected_by_stage: dict[str, int] = field(default_factory=dict)
    removed_components: int = 0
    # rule id -> inputs (images, slices, unpaired files) rejected whole by that rule
    inputs_without_target: dict[str, int] = field(default_factory=dict)
    skipped_files: int = 0

    def describe(self) -> str:
        """Return the one-line summary the CLI prints."""
        candidates = sum(
            n
            for stage, n in self.rejected_by_stage.items()
            if stage in ("synthesis", "format", "rules", "judge")
        )
        no_target = sum(self.inputs_without_target.values())
        reasons = [f"{n} {rule_id}" for rule_id, n in self.inputs_without_target.items()]
        if len(reasons) > 3:
            reasons = [*reasons[:3], f"{len(reasons) - 3} more rules"]
        because = f" ({', '.join(reasons)})" if reasons else ""
        skipped = (
            f", {plural(self.skipped_files, 'mask file')} skipped"
            if self.skipped_files
            else ""
        )
        source = (
            f"{plural(self.images, 'slice')} of {plural(self.sources, 'volume')}"
            if self.volumes
            else plural(self.images, "image")
        )
        return (
            f"{plural(self.accepted, 'record')} accepted, {plural(candidates, 'candidate')} "
            f"rejected, {plural(no_target, 'input')} without a usable target{because}, "
            f"{plural(self.removed_components, 'small component')} removed{skipped}; "
            f"from {source} in {self.seconds:.1f} s"
        )


def plural(count: int, noun: str) -> str:
    """Return '1 image' or '3 images'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _fingerprint(pipeline: Pipeline, options: RunOptions) -> str:
    parts = {
        "manifest": pipeline.loaded.sha256,
        "root": str(pipeline.loaded.root),
        "files": {
            k: hashlib.sha256(p.read_bytes()).hexdigest()
            for k, p in sorted(pipeline.declared_files.items())
        },
        "seed": pipeline.seed,
        "limit": options.limit,
        "batch_size": options.batch_size,
        "engine": __version__,
    }
    vlm_settings = pipeline.vlm.fingerprint()
    if vlm_settings:
        parts["vlm"] = vlm_settings
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run(manifest_path: Path, options: RunOptions) -> RunSummary:
    """Run the whole pipeline for one manifest and write the outputs.

    A run that a VLM stage stopped early returns a summary whose ``stopped`` gives the
    reason. Its outputs contain the batches committed before the stop.

    Raises:
        ConfigError: for problems in the declarative files.
        RunError: for a dataset that cannot be processed at all.
    """
    started = time.perf_counter()
    pipeline = load_pipeline(
        manifest_path,
        options.root,
        options.seed,
        out_dir=options.out_dir,
        overrides=options.vlm_overrides,
    )
    try:
        return _run_pipeline(manifest_path, pipeline, options, started)
    finally:
        pipeline.close()


def _run_pipeline(
    manifest_path: Path, pipeline: Pipeline, options: RunOptions, started: float
) -> RunSummary:
    manifest = pipeline.loaded.manifest
    out = options.out_dir / manifest.name
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "preview"):
        stray = remove_stray_temporaries(folder)
        if stray:
            logger.info(
                "removed %d temporary file(s) left in %s by an interrupted run", len(stray), folder
            )

    discovery = discover(manifest, pipeline.loaded.root)
    items = discovery.items[: options.limit] if options.limit else discovery.items
    if not items:
        raise RunError(
            f"{manifest_path}: no image under {pipeline.loaded.root} matches images.glob "
            f"{manifest.images.glob!r} with its masks ({len(discovery.unpaired_images)} "
            "unpaired); check root, images and masks in the manifest"
        )
    _check_unique_cases(manifest_path, manifest.name, items)

    store = RunStore(out / "run.sqlite")
    stopped: str | None = None
    try:
        fingerprint = _fingerprint(pipeline, options)
        if store.fingerprint() != fingerprint:
            if store.fingerprint() is not None:
                logger.warning(
                    "settings or files changed since the last run in %s; starting over", out
                )
            store.reset(fingerprint)
        done = store.done_batches()
        batches = [
            items[i : i + options.batch_size] for i in range(0, len(items), options.batch_size)
        ]
        todo = [(number, batch) for number, batch in enumerate(batches) if number not in done]
        images_done = len(items) - sum(len(batch) for _, batch in todo)
        workers = options.worker_count
        if options.workers is None and options.executor == "local" and len(todo) <= 1:
            # Starting a pool costs more than one batch of work; explicit --workers wins.
            workers = 1
        executor = make_executor(options.executor, workers, options.scheduler)
        show = options.show_progress
        items_fn = partial(
            process_items,
            manifest=manifest,
            root=pipeline.loaded.root,
            cues=pipeline.cues,
            slice_dir=out / "slices",
        )
        # closing() stops the helper thread at once when a VLM stage ends the run early.
        with (
            executor,
            StageProgress(len(items), images_done, enabled=show) as progress,
            closing(_map_batches(executor, items_fn, todo, workers)) as mapped,
        ):
            for number, batch, results, waited in mapped:
                progress.advance("images", len(batch))
                try:
                    records, rejections, stats, samples = finish_batch(
                        pipeline, [r for item_results in results for r in item_results], progress
                    )
                except BatchIncomplete as exc:
                    stopped = f"batch {number + 1} of {len(batches)} not committed: {exc.message}"
                    break
                stats["timings"]["wait_for_workers"] = waited
                if number == 0:
                    rejections = _discovery_rejections(manifest.name, discovery) + rejections
                    stats["discovery"] = {
                        "images_found": len(discovery.items) + len(discovery.unpaired_images),
                        "paired": len(discovery.items),
                        "used": len(items),
                        "unpaired_images": discovery.unpaired_images,
                        "unpaired_masks": discovery.unpaired_masks,
                        "unmatched_images": discovery.unmatched_images,
                    }
                store.commit_batch(number, len(batch), records, rejections, stats, samples)
                progress.advance("commit", len(batch))
                logger.log(
                    logging.DEBUG if show else logging.INFO,
                    "batch %d/%d: %d records accepted, %d rejections (including removed "
                    "small components)",
                    number + 1,
                    len(batches),
                    len(records),
                    len(rejections),
                )

        from medground.outputs import write_outputs

        summary = write_outputs(
            store,
            out,
            pipeline,
            options,
            started,
            resumed=len(done & set(range(len(batches)))),
            stopped=stopped,
        )
    finally:
        store.close()
    return summary


def _check_unique_cases(manifest_path: Path, dataset: str, items: Iterable[ImageItem]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        key = image_key_for(dataset, item)
        if key in seen:
            raise RunError(
                f"{manifest_path}: images {seen[key]!r} and {item.image!r} both get the id "
                f"{key!r}; set images.case_id to a template that tells them apart, e.g. "
                "'{dir}_{stem}'"
            )
        seen[key] = item.image


def _discovery_rejections(dataset: str, discovery: Discovery) -> list[dict[str, Any]]:
    rows = []
    for image, reason in discovery.unpaired_images:
        rows.append(
            {
                "key": f"{dataset}/{image}",
                "image_key": None,
                "stage": "discover",
                "rule_id": "discover.unpaired_image",
                "message": f"{image}: {reason}",
            }
        )
    for image in discovery.unmatched_images:
        rows.append(
            {
                "key": f"{dataset}/{image}",
                "image_key": None,
                "stage": "discover",
                "rule_id": "discover.pattern_mismatch",
                "message": f"{image}: path does not match images.pattern",
            }
        )
    return rows


def _map_batches(
    executor: Executor,
    items_fn: Callable[[list[ImageItem]], list[list[ImageResult]]],
    todo: Sequence[tuple[int, list[ImageItem]]],
    workers: int,
) -> Generator[tuple[int, list[ImageItem], list[list[ImageResult]], float], None, None]:
    """Yield ``(number, batch, results per item, seconds waited)`` for each batch, in order.

    Each batch goes to the executor in chunks (:func:`_chunks`). With an executor that has
    its own workers, a helper thread hands the next batch to the executor before this one
    is yielded, so the workers and the main process work at the same time. The in-process
    executor gains nothing from that and runs in turn.
    """
    if isinstance(executor, InlineExecutor):
        for number, batch in todo:
            clock = time.perf_counter()
            results = _run_chunks(executor, items_fn, batch, workers)
            yield number, batch, results, time.perf_counter() - clock
        return

    feeder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgr-feeder")
    try:
        pending: tuple[int, list[ImageItem], Future[list[list[ImageResult]]]] | None = None
        for number, batch in todo:
            future = feeder.submit(_run_chunks, executor, items_fn, batch, workers)
            if pending is not None:
                yield _collect(pending)
            pending = (number, batch, future)
        if pending is not None:
            yield _collect(pending)
    finally:
        feeder.shutdown(wait=True, cancel_futures=True)


def _run_chunks(
    executor: Executor,
    items_fn: Callable[[list[ImageItem]], list[list[ImageResult]]],
    batch: list[ImageItem],
    workers: int,
) -> list[list[ImageResult]]:
    """Map ``items_fn`` over the chunks of one batch; return the results of each item.

    Items of one chunk share the fixed costs of target selection (see
    :class:`medground.extract.TargetSelection`), so the in-process executor takes the
    batch whole; with workers, four chunks per worker keep them evenly loaded when
    images differ in cost.
    """
    count = 1 if isinstance(executor, InlineExecutor) else 4 * max(1, workers)
    return [r for chunk in executor.map(items_fn, _chunks(batch, count)) for r in chunk]


def _chunks(batch: list[ImageItem], count: int) -> list[list[ImageItem]]:
    """Split a batch into at most ``count`` chunks of equal size (the last may be short)."""
    size = max(1, math.ceil(len(batch) / count))
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def _collect(
    pending: tuple[int, list[ImageItem], Future[list[list[ImageResult]]]],
) -> tuple[int, list[ImageItem], list[list[ImageResult]], float]:
    number, batch, future = pending
    clock = time.perf_counter()
    results = future.result()
    return number, batch, results, time.perf_counter() - clock


def run_batch(
    pipeline: Pipeline, batch: list[ImageItem], slice_dir: Path, executor: Executor | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Run every stage for one batch of images (per-image stages on ``executor``)."""
    items_fn = partial(
        process_items,
        manifest=pipeline.loaded.manifest,
        root=pipeline.loaded.root,
        cues=pipeline.cues,
        slice_dir=slice_dir,
    )
    per_item = _run_chunks(executor or InlineExecutor(), items_fn, batch, 1)
    return finish_batch(pipeline, [r for results in per_item for r in results])


def finish_batch(
    pipeline: Pipeline, results: list[ImageResult], progress: StageProgress | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Run the batch-wide stages on one batch's image results, given in item order.

    Returns:
        Accepted records, rejections, statistics, and the sample-table rows the rules
        saw (every candidate that passed the format check, with its rule verdict).
    """
    manifest = pipeline.loaded.manifest
    timings: Counter[str] = Counter()
    progress = progress or StageProgress(0, enabled=False)
    rejections = [r for res in results for r in res.rejections]
    for res in results:
        timings.update(res.timings)

    clock = time.perf_counter()
    objects = _attach_cues(results, pipeline.cues)
    timings["cues"] += time.perf_counter() - clock
    progress.advance("cues", len(results))

    clock = time.perf_counter()
    vlm_synthesis = pipeline.vlm.synthesizer is not None
    requests = [
        SynthesisRequest(
            image_key=res.image_key,
            image_path=Path(res.image_path),
            image_sha256=res.sha256,
            width=res.width,
            height=res.height,
            dataset=pipeline.dataset,
            objects=synthesis_objects(res) if vlm_synthesis else tuple(res.objects),
            targets=tuple(res.targets),
        )
        for res in results
        if res.targets
    ]
    try:
        candidates, synth_rejections = pipeline.synthesizer.synthesize(requests)
    except CostCapReached as exc:
        raise BatchIncomplete("cost_cap", cost_cap_message("synthesis", exc)) from exc
    check_retryable(synth_rejections, "synthesis")
    rejections.extend(r.__dict__ for r in synth_rejections)
    vlm_targets = add_vlm_targets(results, candidates) if vlm_synthesis else 0
    timings["synthesis"] += time.perf_counter() - clock
    progress.advance("synthesis", len(results))

    clock = time.perf_counter()
    by_key = {res.image_key: res for res in results}
    records: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    query_numbers: Counter[tuple[str, str]] = Counter()
    for candidate in candidates:
        res = by_key[candidate.image_key]
        target = next(t for t in res.targets if t["target_id"] == candidate.target_id)
        number = query_numbers[(candidate.image_key, candidate.target_id)]
        query_numbers[(candidate.image_key, candidate.target_id)] += 1
        record = build_record(pipeline.loaded, res, target, candidate, number, pipeline.seed)
        problem = pipeline.record_checker.problem(record)
        if problem is not None:
            rejections.append(_rejection(record, "format", "format.record_schema", problem))
            continue
        records.append(record)
        spec = manifest.class_spec(target["class"])
        bounds = spec.area_fraction_bounds if spec is not None else None
        rows.append(sample_row(record, res, target, res.orientation, bounds))
    timings["format"] += time.perf_counter() - clock
    progress.advance("format", len(results))

    clock = time.perf_counter()
    accepted: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    if rows:
        table = pl.DataFrame(rows, schema=table_schema(), orient="row")
        table = add_claims(table, pipeline.claims, pipeline.dataset_terms)
        table = add_uniqueness(table, objects)
        outcome = evaluate(pipeline.rules, table)
        samples = table.to_dicts()
        for index, record in enumerate(records):
            fired = outcome.rejected_by[index]
            warned = outcome.warned_by[index]
            verdict = "pass"
            if fired:
                verdict = "reject"
            elif warned:
                verdict = "warn"
            samples[index]["rules_verdict"] = verdict
            samples[index]["rules_fired"] = ", ".join(r for r, _ in fired + warned) or None
            if fired:
                for rule_id, message in fired:
                    rejections.append(_rejection(record, "rules", rule_id, message))
                continue
            warned = outcome.warned_by[index]
            record["verification"]["rules"] = {
                "verdict": "warn" if warned else "pass",
                "fired": [rule_id for rule_id, _ in warned],
                "evaluated": outcome.evaluated[index],
            }
            accepted.append(record)
    timings["rules"] += time.perf_counter() - clock
    progress.advance("rules", len(results))

    clock = time.perf_counter()
    accepted, judge_verdicts = _judge_stage(pipeline, accepted, results, rejections)
    timings["judge"] += time.perf_counter() - clock
    progress.advance("judge", len(results))

    # Splits hash the group id, so assigning them batch by batch gives the same result as
    # assigning them over the whole dataset at once.
    accepted = assign_splits(accepted, manifest.split)

    stats = _batch_stats(results, candidates, accepted, timings)
    stats["judge_verdicts"] = dict(judge_verdicts)
    stats["vlm_targets"] = vlm_targets
    return accepted, rejections, stats, samples


def _judge_stage(
    pipeline: Pipeline,
    records: list[dict[str, Any]],
    results: list[ImageResult],
    rejections: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Judge the records that passed the rules; return those that pass and the verdicts.

    Failed records become ``judge`` rejections appended to ``rejections``. Without a
    judge every record keeps its ``skipped`` verdict.
    """
    verdicts: Counter[str] = Counter()
    judge = pipeline.vlm.judge
    if judge is None or not records:
        verdicts["skipped"] = len(records)
        return records, verdicts

    outcomes = judge_records(judge, records, results, pipeline.dataset)
    passed = []
    for record, outcome in zip(records, outcomes, strict=True):
        verdicts[outcome.verdict["verdict"]] += 1
        if outcome.passed:
            passed.append(record)
            continue
        for rejection in outcome.rejections:
            rejections.append(_rejection(record, "judge", rejection.rule_id, rejection.message))
    return passed, verdicts


# The object columns the cue stage and the claim checks read.
_OBJECT_COLUMNS = {
    "image_key": pl.String,
    "class": pl.String,
    "object_id": pl.String,
    "area_frac": pl.Float64,
    "cx_frac": pl.Float64,
    "cy_frac": pl.Float64,
    "eccentricity": pl.Float64,
    "solidity": pl.Float64,
    **{f"is_{relation}": pl.Boolean for relation in RELATIONS},
}


def _attach_cues(results: list[ImageResult], cues: CueThresholds) -> pl.DataFrame:
    """Add the cue words to every object row and each target; return the object table.

    The table has one row per object of the batch with :data:`_OBJECT_COLUMNS`, the
    image's ``orientation`` and the cue columns, for :func:`add_uniqueness`.
    """
    rows = [o for res in results for o in res.objects]
    orientations = [res.orientation for res in results for _ in res.objects]
    frame = pl.DataFrame(
        {name: [row.get(name) for row in rows] for name in _OBJECT_COLUMNS},
        schema=_OBJECT_COLUMNS,
    ).with_columns(orientation=pl.Series(orientations, dtype=pl.String))
    with_cues = add_cues(frame, cues)
    added = [c for c in with_cues.columns if c not in frame.columns]
    values = zip(*(with_cues.get_column(c).to_list() for c in added), strict=True)
    for row, row_values in zip(rows, values, strict=True):
        row.update(zip(added, row_values, strict=True))
    for res in results:
        objects = {o["object_id"]: o for o in res.objects}
        for target in res.targets:
            target["cues"] = target_cues(objects, target)
    return with_cues


def _first_ids(accepted: list[dict[str, Any]]) -> dict[str, str]:
    """Return, per warning rule, the id of the first accepted record it fired on."""
    examples: dict[str, str] = {}
    for record in accepted:
        for rule_id in record["verification"]["rules"].get("fired", []):
            examples.setdefault(rule_id, record["id"])
    return examples


def _rejection(record: dict[str, Any], stage: str, rule_id: str, message: str) -> dict[str, Any]:
    return {
        "key": record["id"],
        "image_key": record["id"].rsplit("/", 2)[0],
        "stage": stage,
        "rule_id": rule_id,
        "message": message,
        "query": record["query"],
        "image_path": record["image"]["path"],
        "targets_json": json.dumps(record["targets"]),
    }


def _batch_stats(
    results: list[ImageResult],
    candidates: list[Any],
    accepted: list[dict[str, Any]],
    timings: Counter[str],
) -> dict[str, Any]:
    objects = [o for res in results for o in res.objects]
    # Targets that a VLM chose itself are counted apart, as ``vlm_targets``.
    targets = [t for res in results for t in res.targets if t.get("source") != "vlm"]
    return {
        "images": len(results),
        "items": len({res.index for res in results}),
        "images_loaded": sum(1 for r in results if r.width),
        "images_with_objects": sum(1 for r in results if r.objects),
        "objects": len(objects),
        "objects_by_class": dict(Counter(o["class"] for o in objects)),
        "objects_by_size": dict(Counter(str(o.get("size")) for o in objects)),
        "targets": len(targets),
        "targets_by_task": dict(Counter(t["task"] for t in targets)),
        "candidates": len(candidates),
        "accepted_by_class": dict(Counter(t["class"] for r in accepted for t in r["targets"][:1])),
        "accepted_by_task": dict(Counter(r["task"] for r in accepted)),
        "accepted_by_split": dict(Counter(str(r["split"]) for r in accepted)),
        "accepted_by_size": dict(Counter(str(r["cues"].get("size")) for r in accepted)),
        "warnings_by_rule": dict(
            Counter(rule for r in accepted for rule in r["verification"]["rules"].get("fired", []))
        ),
        "warning_examples": _first_ids(accepted),
        "timings": dict(timings),
    }
