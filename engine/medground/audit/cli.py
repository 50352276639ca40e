"""``mgr audit``: sample records for human review, exchange with Label Studio, report.

The group is registered into ``mgr`` by the main CLI; it can also be driven alone with
``click.testing.CliRunner``. It configures no logging.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from medground.audit._files import write_text_atomic
from medground.audit.decisions import load_decisions, write_decisions
from medground.audit.labelstudio import (
    decisions_file_name,
    export_tasks,
    import_export,
    labeling_config,
)
from medground.audit.pack import SPLIT_CHOICES, SampleRequest, build_pack, load_pack
from medground.audit.report import build_report, render_markdown
from medground.audit.runs import AuditInputError
from medground.audit.sampling import STRATIFY_FIELDS, parse_by

logger = logging.getLogger(__name__)

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(name="audit")
def audit_group() -> None:
    """Audit output by hand: sample, review in the browser, report reliability."""


@audit_group.command("sample")
@click.argument("run_dirs", nargs=-1, required=True, type=_EXISTING_DIR)
@click.option("--n", "n", type=int, required=True, help="Number of accepted records to sample.")
@click.option(
    "--by",
    default="dataset,task",
    show_default=True,
    help=f"Comma-separated fields to stratify by ({', '.join(STRATIFY_FIELDS)}); '' for none.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the draw.")
@click.option(
    "--include-rejected",
    "include_rejected",
    type=int,
    default=0,
    show_default=True,
    help="Number of rejected candidates to add, to estimate the false-rejection rate.",
)
@click.option(
    "--split",
    type=click.Choice(SPLIT_CHOICES),
    default="test",
    show_default=True,
    help="Split the accepted records are drawn from.",
)
@click.option(
    "--max-side",
    type=int,
    default=1024,
    show_default=True,
    help="Maximum length of a rendered image's longer side, in pixels; larger ones are downscaled.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Pack folder to create.",
)
@click.option("--force", is_flag=True, help="Replace the pack folder if it exists.")
def sample_command(
    run_dirs: tuple[Path, ...],
    n: int,
    by: str,
    seed: int,
    include_rejected: int,
    split: str,
    max_side: int,
    out_dir: Path,
    force: bool,
) -> None:
    """Draw a stratified random sample from RUN_DIRS and write an audit pack.

    Each RUN_DIR is a dataset folder written by 'mgr run'. Open PACK_DIR/index.html in a
    browser to review.
    """
    try:
        fields = parse_by(by)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from exc
    request = SampleRequest(
        run_dirs=list(run_dirs),
        n=n,
        by=fields,
        seed=seed,
        include_rejected=include_rejected,
        split=split,
        max_side=max_side,
    )
    try:
        manifest = build_pack(request, out_dir, force=force)
    except AuditInputError as exc:
        raise click.ClickException(str(exc)) from exc

    n_rejected = sum(1 for item in manifest.items if item.kind == "rejected")
    click.echo(
        f"Wrote pack {manifest.pack_id}: {len(manifest.items) - n_rejected} accepted and "
        f"{n_rejected} rejected items in {len(manifest.strata)} strata to {out_dir}"
    )
    for note in manifest.notes:
        click.echo(f"note: {note}")
    click.echo(f"Review: open {out_dir / 'index.html'} in a browser.")


@audit_group.command("report")
@click.argument("decision_files", nargs=-1, required=True, type=_EXISTING_FILE)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the Markdown report here and the JSON beside it (same name, .json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of Markdown.")
def report_command(decision_files: tuple[Path, ...], out_path: Path | None, as_json: bool) -> None:
    """Report accuracy, error types and agreement from DECISION_FILES."""
    try:
        files = [(path, load_decisions(path)) for path in decision_files]
        report = build_report(files)
    except AuditInputError as exc:
        raise click.ClickException(str(exc)) from exc

    markdown = render_markdown(report)
    report_json = json.dumps(report, indent=2) + "\n"
    if out_path is None:
        click.echo(report_json if as_json else markdown, nl=False)
        return
    if out_path.suffix == ".json":
        raise click.BadParameter(
            "give the Markdown file name (e.g. report.md); the JSON goes beside it",
            param_hint="--out",
        )
    write_text_atomic(out_path, markdown)
    write_text_atomic(out_path.with_suffix(".json"), report_json)
    click.echo(f"Wrote {out_path} and {out_path.with_suffix('.json')}")


@audit_group.command("export-labelstudio")
@click.argument("pack_dir", type=_EXISTING_DIR)
@click.option(
    "--image-url-prefix",
    required=True,
    help=(
        "Prefix of the image URLs Label Studio loads, joined to 'images/item-0001.clean.png': "
        "e.g. the URL where PACK_DIR is served, or Label Studio's '/data/local-files/?d=' "
        "path of PACK_DIR when local file serving is on."
    ),
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=(
        "Tasks file to write [default: PACK_DIR/labelstudio/tasks.json]; config.xml goes beside it."
    ),
)
def export_labelstudio_command(
    pack_dir: Path, image_url_prefix: str, out_path: Path | None
) -> None:
    """Export PACK_DIR as Label Studio import tasks with the boxes as predictions."""
    try:
        manifest = load_pack(pack_dir)
    except AuditInputError as exc:
        raise click.ClickException(str(exc)) from exc

    out_path = out_path or pack_dir / "labelstudio" / "tasks.json"
    tasks = export_tasks(manifest, image_url_prefix)
    classes = [target.class_name for item in manifest.items for target in item.targets]
    write_text_atomic(out_path, json.dumps(tasks, indent=2) + "\n")
    write_text_atomic(out_path.parent / "config.xml", labeling_config(classes))
    click.echo(
        f"Wrote {len(tasks)} tasks to {out_path} and the labeling configuration to "
        f"{out_path.parent / 'config.xml'}"
    )


@audit_group.command("import-labelstudio")
@click.argument("export_file", type=_EXISTING_FILE)
@click.option(
    "--pack",
    "pack_dir",
    type=_EXISTING_DIR,
    required=True,
    help="The pack the tasks were exported from.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the decisions files [default: PACK_DIR/decisions].",
)
def import_labelstudio_command(export_file: Path, pack_dir: Path, out_dir: Path | None) -> None:
    """Read a Label Studio JSON EXPORT_FILE back as one decisions file per annotator."""
    try:
        manifest = load_pack(pack_dir)
        files, summary = import_export(export_file, manifest)
    except AuditInputError as exc:
        raise click.ClickException(str(exc)) from exc
    if not files:
        raise click.ClickException(
            f"{export_file}: no annotation with a verdict ({summary.annotations} annotations, "
            f"{summary.cancelled} cancelled, {summary.without_verdict} without a verdict)"
        )

    out_dir = out_dir or pack_dir / "decisions"
    for decisions in files:
        path = out_dir / decisions_file_name(decisions)
        write_decisions(decisions, path)
        click.echo(f"Wrote {len(decisions.decisions)} decisions of {decisions.reviewer} to {path}")
    click.echo(
        f"Read {summary.annotations} annotations: {summary.cancelled} cancelled, "
        f"{summary.without_verdict} without a verdict, "
        f"{summary.corrected_boxes} with corrected boxes"
    )
