"""Build and load audit packs.

An audit pack is a folder a curator can hand to reviewers::

    PACK_DIR/
      index.html     static review page with the items embedded (works from file://)
      pack.json      how the sample was drawn and every item (models.PackManifest)
      images/        item-0001.png (boxes drawn) and item-0001.clean.png, downscaled

The pack is built in a temporary sibling folder and renamed into place, so an
interrupted run leaves no half-written pack.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from medground.audit._files import write_text_atomic
from medground.audit.models import (
    ItemKind,
    PackImage,
    PackItem,
    PackManifest,
    PackSource,
    PackTarget,
    StratumCount,
)
from medground.audit.page import render_review_page
from medground.audit.render import ImageRenderError, render_item_images
from medground.audit.runs import AuditInputError, Candidate, RunContents, load_run
from medground.audit.sampling import Stratum, draw_stratified, stratum_key

logger = logging.getLogger(__name__)

PACK_FILE = "pack.json"
PAGE_FILE = "index.html"
IMAGES_DIR = "images"
SPLIT_CHOICES = ("train", "val", "test", "all")
# Rejected candidates are spread over datasets and the stage that rejected them.
REJECTED_STRATIFY_FIELDS = ("dataset", "stage")


@dataclass(frozen=True)
class SampleRequest:
    """Parameters of ``mgr audit sample``."""

    run_dirs: Sequence[Path]
    n: int
    by: Sequence[str]
    seed: int
    include_rejected: int
    split: str
    max_side: int


def build_pack(request: SampleRequest, out_dir: Path, *, force: bool = False) -> PackManifest:
    """Sample candidates from run folders and write an audit pack to ``out_dir``.

    Args:
        request: What to sample and how.
        out_dir: The pack folder to create.
        force: Replace ``out_dir`` if it exists.

    Returns:
        The manifest written to ``pack.json``.

    Raises:
        AuditInputError: On invalid parameters, run folders or images, or when
            ``out_dir`` exists and ``force`` is false.
    """
    _check_request(request)
    if out_dir.exists() and not force:
        raise AuditInputError(
            f"pack folder {out_dir} already exists; choose another --out or pass --force "
            "to replace it (decisions saved in browsers are keyed by pack id, not folder)"
        )

    runs = [
        load_run(run_dir, with_rejected=request.include_rejected > 0)
        for run_dir in request.run_dirs
    ]
    notes = [note for run in runs for note in run.notes]
    accepted = _eligible_accepted(runs, request.split)

    rng = random.Random(request.seed)
    accepted_strata = draw_stratified(accepted, request.by, request.n, rng)
    rejected_strata: list[Stratum] = []
    if request.include_rejected > 0:
        rejected = [candidate for run in runs for candidate in run.rejected]
        if rejected:
            rejected_strata = draw_stratified(
                rejected, REJECTED_STRATIFY_FIELDS, request.include_rejected, rng
            )
    notes.extend(_coverage_notes(accepted_strata, rejected_strata, request))

    # Accepted and rejected items are shuffled together so that the item number does not
    # tell the reviewer which is which.
    chosen = [c for stratum in accepted_strata + rejected_strata for c in stratum.chosen]
    rng.shuffle(chosen)
    keys = {id(c): s.key for s in accepted_strata + rejected_strata for c in s.chosen}

    # The CLI prints the notes; they are also kept in pack.json.
    for note in notes:
        logger.debug("%s", note)

    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{out_dir.name}.{uuid.uuid4().hex}"
    # mkdir (not mkdtemp, whose 0700 mode would survive the rename) so the pack gets the
    # permissions the umask allows and other reviewers on the machine can open it.
    staging.mkdir()
    try:
        items = [
            _render_item(index, candidate, keys[id(candidate)], staging, request.max_side)
            for index, candidate in enumerate(chosen, start=1)
        ]
        manifest = PackManifest(
            pack_id=_pack_id(runs, request, items),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            seed=request.seed,
            n_requested=request.n,
            by=list(request.by),
            split=request.split,
            include_rejected=request.include_rejected,
            max_side=request.max_side,
            sources=[_source(run, request.split) for run in runs],
            strata=_stratum_counts(accepted_strata, "accepted")
            + _stratum_counts(rejected_strata, "rejected"),
            notes=notes,
            items=items,
        )
        write_text_atomic(staging / PACK_FILE, manifest.model_dump_json(indent=2, by_alias=True))
        write_text_atomic(staging / PAGE_FILE, render_review_page(manifest))
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    logger.info("wrote audit pack %s with %d items to %s", manifest.pack_id, len(items), out_dir)
    return manifest


def _check_request(request: SampleRequest) -> None:
    if request.n < 1:
        raise AuditInputError(f"--n must be at least 1, got {request.n}")
    if request.include_rejected < 0:
        raise AuditInputError(
            f"--include-rejected must be 0 or more, got {request.include_rejected}"
        )
    if request.split not in SPLIT_CHOICES:
        raise AuditInputError(
            f"invalid --split {request.split!r}; valid choices: {', '.join(SPLIT_CHOICES)}"
        )
    if request.max_side < 64:
        raise AuditInputError(f"--max-side must be at least 64 pixels, got {request.max_side}")
    if not request.run_dirs:
        raise AuditInputError("give at least one run folder")


def _eligible_accepted(runs: Sequence[RunContents], split: str) -> list[Candidate]:
    accepted = [candidate for run in runs for candidate in run.accepted]
    eligible = [c for c in accepted if split == "all" or c.split == split]
    if eligible:
        return eligible

    found: dict[str, int] = {}
    for candidate in accepted:
        found[candidate.field_value("split")] = found.get(candidate.field_value("split"), 0) + 1
    summary = ", ".join(f"{name}: {count}" for name, count in sorted(found.items())) or "none"
    raise AuditInputError(
        f"no accepted records with split {split!r} in {', '.join(str(r.run_dir) for r in runs)} "
        f"(records per split: {summary}); pass --split with one of the splits found, "
        "or --split all"
    )


def _coverage_notes(
    accepted: Sequence[Stratum], rejected: Sequence[Stratum], request: SampleRequest
) -> list[str]:
    notes = []
    empty = [s.key for s in accepted if not s.chosen]
    if empty:
        notes.append(
            f"--n {request.n} is smaller than the {len(accepted)} strata, so these strata "
            f"have no item: {', '.join(empty)}; raise --n to cover every stratum"
        )
    population = sum(s.population for s in accepted)
    if request.n > population:
        notes.append(
            f"--n {request.n} exceeds the {population} eligible accepted records; all were taken"
        )
    if request.include_rejected > 0:
        reviewable = sum(s.population for s in rejected)
        if reviewable == 0:
            notes.append(
                "no reviewable rejected candidates were found, so the pack cannot estimate "
                "the false-rejection rate"
            )
        elif request.include_rejected > reviewable:
            notes.append(
                f"--include-rejected {request.include_rejected} exceeds the {reviewable} "
                "reviewable rejected candidates; all were taken"
            )
    return notes


def _render_item(
    index: int, candidate: Candidate, stratum: str, pack_dir: Path, max_side: int
) -> PackItem:
    item_id = f"item-{index:04d}"
    boxed = f"{IMAGES_DIR}/{item_id}.png"
    clean = f"{IMAGES_DIR}/{item_id}.clean.png"
    try:
        targets = [PackTarget.model_validate(target) for target in candidate.targets]
    except ValidationError as exc:
        raise AuditInputError(
            f"{candidate.run_dir}: {candidate.kind} {candidate.record_id!r} has invalid "
            f"targets: {exc.errors()[0]['msg']}"
        ) from exc

    expected = None
    if candidate.width is not None and candidate.height is not None:
        expected = (int(candidate.width), int(candidate.height))
    try:
        rendered = render_item_images(
            candidate.image_path,
            [target.bbox_xyxy for target in targets],
            pack_dir / boxed,
            pack_dir / clean,
            max_side=max_side,
            expected_size=expected,
        )
    except ImageRenderError as exc:
        raise AuditInputError(
            f"{candidate.run_dir}: {candidate.kind} {candidate.record_id!r}: {exc}"
        ) from exc

    return PackItem(
        item_id=item_id,
        kind=candidate.kind,
        record_id=candidate.record_id,
        run_dir=str(candidate.run_dir.resolve()),
        stratum=stratum,
        dataset=candidate.dataset,
        task=candidate.task,
        split=candidate.split,
        query=candidate.query,
        image=PackImage(
            path=str(candidate.image_path),
            width=rendered.width,
            height=rendered.height,
            boxed=boxed,
            clean=clean,
            rendered_width=rendered.rendered_width,
            rendered_height=rendered.rendered_height,
            scale=rendered.scale,
        ),
        targets=targets,
        stage=candidate.stage,
        rule_id=candidate.rule_id,
        message=candidate.message,
    )


def _source(run: RunContents, split: str) -> PackSource:
    return PackSource(
        run_dir=str(run.run_dir.resolve()),
        records_sha256=run.records_sha256,
        rejected_sha256=run.rejected_sha256,
        accepted_eligible=sum(1 for c in run.accepted if split == "all" or c.split == split),
        rejected_reviewable=len(run.rejected),
    )


def _stratum_counts(strata: Sequence[Stratum], kind: ItemKind) -> list[StratumCount]:
    return [
        StratumCount(kind=kind, stratum=s.key, population=s.population, sampled=len(s.chosen))
        for s in strata
    ]


def _pack_id(runs: Sequence[RunContents], request: SampleRequest, items: Sequence[PackItem]) -> str:
    """Derive the pack id from its inputs, so re-sampling the same runs gives the same id."""
    payload = {
        "records": [run.records_sha256 for run in runs],
        "rejected": [run.rejected_sha256 for run in runs],
        "request": [
            request.n,
            list(request.by),
            request.seed,
            request.include_rejected,
            request.split,
        ],
        "items": [[item.item_id, item.kind, item.record_id] for item in items],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
    return f"audit-{digest[:12]}"


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.resolve().parent))
    os.replace(out_dir, previous / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(previous)


def load_pack(pack_dir: Path) -> PackManifest:
    """Load and validate ``pack.json`` of an audit pack.

    Raises:
        AuditInputError: If the file is missing or invalid.
    """
    path = pack_dir / PACK_FILE
    if not path.is_file():
        raise AuditInputError(
            f"{pack_dir}: no {PACK_FILE}; pass a folder written by 'mgr audit sample'"
        )
    try:
        return PackManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        first = exc.errors()[0]
        location = "/".join(str(part) for part in first["loc"])
        raise AuditInputError(
            f"{path}: invalid audit pack at '{location}': {first['msg']}; "
            "re-create the pack with 'mgr audit sample'"
        ) from exc


__all__ = ["SampleRequest", "build_pack", "load_pack", "stratum_key"]
