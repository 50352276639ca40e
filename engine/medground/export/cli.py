"""``mgr export RUN_DIR... --format FORMAT --out DIR``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

from medground.export.common import ExportError, ExportOptions, LinkMode, ResizeSettings
from medground.export.formats import FORMATS, LLAMA_FACTORY_MARKUPS, export_records
from medground.export.resize_options import resize_options
from medground.export.runs import RecordFileError, load_runs

logger = logging.getLogger(__name__)


@click.command("export")
@click.argument(
    "run_dirs",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "--format",
    "format_name",
    required=True,
    type=click.Choice(tuple(FORMATS)),
    help="Training format to write.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the export into.",
)
@click.option(
    "--images",
    "link",
    type=click.Choice(("copy", "hardlink")),
    default="copy",
    show_default=True,
    help="How images get into the export folder; hardlink needs one file system.",
)
@click.option(
    "--markup",
    type=click.Choice(LLAMA_FACTORY_MARKUPS),
    default=None,
    help="Box markup of the assistant responses, llama-factory only: the model family "
    "you fine-tune.",
)
@resize_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into a non-empty --out folder, replacing files of the same name; other "
    "files there stay.",
)
def export_command(
    run_dirs: tuple[Path, ...],
    format_name: str,
    out_dir: Path,
    link: str,
    markup: str | None,
    resize: ResizeSettings,
    overwrite: bool,
) -> None:
    """Export the records of one or more runs to a VLM training format."""
    if format_name == "llama-factory" and markup is None:
        raise click.UsageError(
            "llama-factory needs --markup: the box text of the model you fine-tune "
            f"({', '.join(LLAMA_FACTORY_MARKUPS)})"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise click.UsageError(
            f"--out {out_dir} is not empty; choose a new folder or pass --overwrite"
        )

    options = ExportOptions(
        out_dir=out_dir,
        link=cast(LinkMode, link),
        markup=markup,
        resize=resize,
        run_sources=tuple(path.resolve() for path in run_dirs),
    )
    try:
        loaded = load_runs(run_dirs)
        result = export_records(loaded.records, format_name, options)
    except (RecordFileError, ExportError) as exc:
        raise click.ClickException(str(exc)) from exc

    counts = ", ".join(f"{split} {count}" for split, count in result.counts.items())
    click.echo(f"exported {sum(result.counts.values())} records ({counts}) to {out_dir}")
