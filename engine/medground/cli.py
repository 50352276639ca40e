"""The ``mgr`` command line. Logging is configured here and nowhere else."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal

import click

from medground import __version__
from medground.threads import use_one_native_thread

# This module imports no NumPy, and the subcommands import it only when they run, so the
# thread limits are in place before NumPy loads OpenBLAS.
use_one_native_thread()

from medground.config.errors import ConfigError  # noqa: E402

logger = logging.getLogger("medground")


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore", "PIL", "matplotlib", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)


class _LazyGroup(click.Group):
    """A group that imports each listed subcommand only when that subcommand is requested.

    ``mgr run`` then starts without importing the evaluation, export, audit and rule
    tools (SciPy's optimiser among them), which took about half a second.
    """

    # name: (module, attribute)
    lazy: dict[str, tuple[str, str]] = {
        "audit": ("medground.audit.cli", "audit_group"),
        "eval": ("medground.evaluate", "eval_command"),
        "export": ("medground.export.cli", "export_command"),
        "rules": ("medground.verify.cli", "rules_group"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            module, attribute = self.lazy[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mgr")
@click.option("-v", "--verbose", count=True, help="Log debug messages too.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """MedGround: verified referring-grounding data from expert segmentations."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    _configure_logging(verbose, quiet)


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Output folder; the run writes into OUT/<dataset name>/.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset folder, replacing the manifest's root.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N paired images (in sorted path order).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of every random choice; default: the manifest's seed.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per batch; memory grows with it, and a killed run resumes "
    "after the last finished batch.",
)
@click.option("--no-preview", is_flag=True, help="Skip the PNG contact sheets.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes for the per-image stages (load, objects, targets); default: all "
    "cores (os.cpu_count()), or the main process alone when the run has one batch to do. "
    "1 runs them in the main process. With --executor dask and no --scheduler, the number "
    "of local Dask workers.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="Where the per-image stages run: a local process pool, or dask.distributed "
    "(needs the 'dask' extra).",
)
@click.option(
    "--scheduler",
    metavar="ADDR",
    default=None,
    help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (with "
    "--executor dask); default: start a local cluster on 127.0.0.1.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Draw per-stage progress bars on stderr; default: only when stderr is a terminal.",
)
@click.option(
    "--synthesizer",
    type=click.Choice(["template", "vlm"]),
    default=None,
    help="Who writes the queries, replacing the manifest's synthesizer kind: the offline "
    "'template' synthesiser or a 'vlm'. Default: the manifest's kind, or 'vlm' with --model.",
)
@click.option(
    "--model",
    metavar="NAME",
    default=None,
    help="litellm model name of the VLM synthesiser, e.g. openai/gpt-4o; replaces "
    "synthesizer.provider.model and selects --synthesizer vlm.",
)
@click.option(
    "--api-base",
    metavar="URL",
    default=None,
    help="Endpoint URL of the VLM synthesiser and judge, e.g. http://127.0.0.1:8000/v1 for "
    "a local OpenAI-compatible server; replaces provider.api_base of both.",
)
@click.option(
    "--judge-model",
    metavar="NAME",
    default=None,
    help="litellm model name of the visual judge; replaces judge.provider.model, or adds a "
    "judge with the synthesiser's provider settings when the manifest has none.",
)
def run(
    manifest: Path,
    out_dir: Path,
    root: Path | None,
    limit: int | None,
    seed: int | None,
    batch_size: int,
    no_preview: bool,
    workers: int | None,
    executor: str,
    scheduler: str | None,
    progress: bool | None,
    synthesizer: str | None,
    model: str | None,
    api_base: str | None,
    judge_model: str | None,
) -> None:
    """Run the whole pipeline for one dataset manifest.

    Exit status 1 means the run finished but accepted no record (report.md lists every
    rejection with its reason). 2 means the run could not start or failed. 3 means a
    VLM stage stopped it early (cost cap, or calls that failed after their retries); the
    outputs then hold the batches finished so far, and the same command resumes the run.
    """
    from medground.executors import ExecutorError
    from medground.runner import RunError, RunOptions
    from medground.runner import run as run_pipeline

    synthesizer_kind: Literal["template", "vlm"] | None = None
    if synthesizer == "vlm":
        synthesizer_kind = "vlm"
    elif synthesizer == "template":
        synthesizer_kind = "template"
    if synthesizer == "template" and model is not None:
        _fail(f"--model {model} sets the VLM synthesiser's model; drop --synthesizer template")
    if scheduler is not None and executor != "dask":
        _fail(f"--scheduler {scheduler} needs --executor dask; the local executor has none")
    if scheduler is not None and workers is not None:
        logger.warning(
            "--workers %d is ignored with --scheduler: the cluster has its own workers", workers
        )

    options = RunOptions(
        out_dir=out_dir,
        root=root,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        previews=not no_preview,
        workers=workers,
        executor="dask" if executor == "dask" else "local",
        scheduler=scheduler,
        progress=progress,
        synthesizer=synthesizer_kind,
        model=model,
        api_base=api_base,
        judge_model=judge_model,
    )
    try:
        summary = run_pipeline(manifest, options)
    except ConfigError as exc:
        _fail(f"invalid configuration:\n{exc}")
        return
    except (RunError, ExecutorError) as exc:
        _fail(f"run failed: {exc}")
        return
    resumed = f", {summary.resumed_batches} batch(es) reused" if summary.resumed_batches else ""
    click.echo(f"{summary.out}: {summary.describe()}{resumed}; see {summary.out / 'report.md'}")
    if summary.stopped:
        click.echo(f"run stopped early: {summary.stopped}", err=True)
        sys.exit(3)
    if summary.accepted == 0:
        click.echo(
            f"no record was accepted; {summary.out / 'report.md'} lists every rejection "
            "with its reason",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset folder, replacing each manifest's root.",
)
@click.option(
    "--skip-root-check",
    is_flag=True,
    help="Do not require the dataset root to exist (checks the files only).",
)
def validate(manifests: tuple[Path, ...], root: Path | None, skip_root_check: bool) -> None:
    """Check manifests with their rule, cue and phrasing files, without reading images."""
    from medground.runner import load_pipeline

    failures = 0
    for path in manifests:
        override = root
        if skip_root_check and override is None:
            override = Path.cwd()
        try:
            pipeline = load_pipeline(path, override)
        except ConfigError as exc:
            failures += 1
            click.echo(str(exc), err=True)
            continue
        pipeline.close()
        click.echo(
            f"{path}: ok ({len(pipeline.rules.rules)} rules, "
            f"{len(pipeline.loaded.manifest.classes)} classes)"
        )
    if failures:
        _fail(f"{failures} of {len(manifests)} manifest(s) have problems")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--n",
    "count",
    type=click.IntRange(min=1),
    default=24,
    show_default=True,
    help="Number of accepted records, and of rejections, to draw.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
def preview(run_dir: Path, count: int, seed: int) -> None:
    """Draw PNG contact sheets of a run's records and rejections into RUN_DIR/preview/."""
    from medground.preview import write_previews

    if not (run_dir / "records.jsonl").is_file():
        _fail(
            f"{run_dir}: no records.jsonl here; pass the folder 'mgr run' wrote, e.g. out/<dataset>"
        )
    paths = write_previews(run_dir, n=count, seed=seed)
    for path in paths:
        click.echo(str(path))


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--images",
    "count",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Number of synthetic images to write.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator.")
@click.option(
    "--force",
    is_flag=True,
    help="Write into DIRECTORY even when it is not empty, replacing the demo's files.",
)
def demo(directory: Path, count: int, seed: int, force: bool) -> None:
    """Write a synthetic dataset (images, label masks, manifest) for a first run."""
    from medground.demo import write_demo

    if directory.exists() and not directory.is_dir():
        _fail(f"{directory} is a file; give a folder for the demo dataset")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        _fail(
            f"{directory} is not empty; choose a new folder, or pass --force to replace "
            "its demo.yaml, images/ and labels/"
        )
    manifest = write_demo(directory, count=count, seed=seed)
    click.echo(f"wrote {count} images and {manifest}; next: mgr run {manifest}")


if __name__ == "__main__":
    main()
