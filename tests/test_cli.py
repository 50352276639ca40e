"""The ``mgr`` command line: help texts, and malformed inputs that must fail cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import polars as pl
import pytest

from medground.cli import main
from support import invoke, square_labels, tiny_dataset, write_image

_CONTEXT = click.Context(main)
SUBCOMMANDS = main.list_commands(_CONTEXT)


def test_main_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert {"audit", "demo", "eval", "export", "preview", "rules", "run", "validate"} <= set(
        SUBCOMMANDS
    )
    for name in SUBCOMMANDS:
        assert name in result.output


def test_run_starts_without_importing_the_other_tools() -> None:
    # A fresh interpreter: the test process has imported everything already.
    code = (
        "import sys; from medground.cli import main; "
        "main.get_command(None, 'run'); "
        "prefixes = ('medground.', 'scipy.optimize'); "
        "print(','.join(sorted(m for m in sys.modules if m.startswith(prefixes))))"
    )
    engine = str(Path(__file__).resolve().parents[1] / "engine")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": engine},
    )
    loaded = set(result.stdout.strip().split(","))
    assert "medground.cli" in loaded
    assert not loaded & {"medground.evaluate", "medground.audit.cli", "medground.export.cli",
                         "medground.verify.cli", "scipy.optimize"}


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_describes_options(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    subcommand = main.get_command(_CONTEXT, command)
    assert subcommand is not None
    for option in subcommand.params:
        if option.param_type_name != "option" or option.name == "help":
            continue
        assert option.help, f"mgr {command} {option.opts[0]} has no help text"


@pytest.mark.parametrize(
    ("command", "option", "unit"),
    [
        ("run", "--batch-size", "images"),
        ("run", "--limit", "images"),
        ("demo", "--images", "images"),
        ("preview", "--n", "records"),
    ],
    ids=["batch-size", "limit", "demo-images", "preview-count"],
)
def test_help_states_units(command: str, option: str, unit: str) -> None:
    param = next(p for p in main.commands[command].params if option in p.opts)
    assert unit in param.help.lower()


# Each row edits the tiny manifest's text; the run must stop before reading any image.
CONFIG_CASES = [
    ("unknown-key", "classes:", "mask_glob: labels/*.png\nclasses:", "mask_glob"),
    ("wrong-type", "min_object_px: 4", "min_object_px: many", "'many'"),
    ("missing-root", "root: .", "root: no/such/folder", "no/such/folder"),
    ("bad-encoding", "encoding: label_map", "encoding: labelmap", "'labelmap'"),
    ("unknown-class", "{1: lesion}", "{1: tumour}", "tumour"),
]


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [row[1:] for row in CONFIG_CASES],
    ids=[row[0] for row in CONFIG_CASES],
)
def test_bad_manifest_fails_cleanly(tmp_path: Path, old: str, new: str, named: str) -> None:
    manifest = tiny_dataset(tmp_path)
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    result = invoke("run", manifest, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert str(manifest) in result.output
    assert named in result.output


def test_missing_manifest_fails_cleanly(tmp_path: Path) -> None:
    result = invoke("run", tmp_path / "absent.yaml", "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "absent.yaml" in result.output


def test_no_images_fails_cleanly(tmp_path: Path) -> None:
    manifest = tiny_dataset(tmp_path)
    for path in (tmp_path / "images").iterdir():
        path.unlink()
    result = invoke("run", manifest, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "images/*.png" in result.output


def _truncated_png(folder: Path) -> str:
    path = write_image(folder / "images" / "cut.png", np.full((80, 96), 90, np.uint8))
    path.write_bytes(path.read_bytes()[:60])
    write_image(folder / "labels" / "cut.png", square_labels())
    return "cut.png"


def _empty_mask(folder: Path) -> str:
    write_image(folder / "images" / "blank.png", np.full((80, 96), 90, np.uint8))
    write_image(folder / "labels" / "blank.png", np.zeros((80, 96), np.uint8))
    return "blank.png"


def _size_mismatch(folder: Path) -> str:
    write_image(folder / "images" / "wide.png", np.full((80, 96), 90, np.uint8))
    write_image(folder / "labels" / "wide.png", square_labels(height=80, width=100))
    return "100x80"


def _unknown_label(folder: Path) -> str:
    write_image(folder / "images" / "odd.png", np.full((80, 96), 90, np.uint8))
    write_image(folder / "labels" / "odd.png", square_labels(value=7))
    return "7"


def _no_mask(folder: Path) -> str:
    write_image(folder / "images" / "lonely.png", np.full((80, 96), 90, np.uint8))
    return "lonely.png"


def _unreadable_mask(folder: Path) -> str:
    write_image(folder / "images" / "junk.png", np.full((80, 96), 90, np.uint8))
    (folder / "labels" / "junk.png").write_bytes(b"not an image at all")
    return "junk.png"


# (case, writer of the bad pair returning a word the message must name, stage, rule id)
REJECTION_CASES: list[tuple[str, Callable[[Path], str], str, str]] = [
    ("truncated-png", _truncated_png, "load", "load.unreadable_image"),
    ("empty-mask", _empty_mask, "objects", "objects.empty_mask"),
    ("size-mismatch", _size_mismatch, "load", "load.mask_size_mismatch"),
    ("unknown-label", _unknown_label, "load", "load.unknown_label"),
    ("no-mask", _no_mask, "discover", "discover.unpaired_image"),
    ("unreadable-mask", _unreadable_mask, "load", "load.unreadable_mask"),
]


@pytest.mark.parametrize(
    ("write_bad", "stage", "rule_id"),
    [row[1:] for row in REJECTION_CASES],
    ids=[row[0] for row in REJECTION_CASES],
)
def test_bad_input_is_recorded(
    tmp_path: Path, write_bad: Callable[[Path], str], stage: str, rule_id: str
) -> None:
    manifest = tiny_dataset(tmp_path)
    named = write_bad(tmp_path)
    result = invoke("run", manifest, "--out", tmp_path / "out")
    rejected = pl.read_parquet(tmp_path / "out" / "tiny" / "rejected.parquet")
    row = rejected.filter(pl.col("rule_id") == rule_id)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "1 record accepted" in result.output
    assert f"1 input without a usable target (1 {rule_id})" in result.output
    assert row.height == 1, rejected.to_dicts()
    assert row.item(0, "stage") == stage
    assert named in row.item(0, "message")


def test_run_without_records_exits_1(tmp_path: Path) -> None:
    manifest = tiny_dataset(tmp_path)
    write_image(tmp_path / "labels" / "good0.png", np.zeros((80, 96), np.uint8))
    _truncated_png(tmp_path)
    result = invoke("run", manifest, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "0 records accepted" in result.output
    assert "2 inputs without a usable target" in result.output
    assert "1 objects.empty_mask" in result.output
    assert "1 load.unreadable_image" in result.output
    assert "no record was accepted" in result.output


def test_demo_keeps_a_folder_with_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    assert invoke("demo", folder, "--images", "2").exit_code == 0
    manifest = folder / "demo.yaml"
    manifest.write_text("# edited by hand\n", encoding="utf-8")
    refused = invoke("demo", folder, "--images", "2")
    assert refused.exit_code == 2
    assert "not empty" in refused.output
    assert "--force" in refused.output
    assert manifest.read_text(encoding="utf-8") == "# edited by hand\n"
    replaced = invoke("demo", folder, "--images", "2", "--force")
    assert replaced.exit_code == 0, replaced.output
    assert "edited by hand" not in manifest.read_text(encoding="utf-8")


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("3", "3")], ids=["unset", "user"])
def test_cli_limits_blas_threads(preset: str | None, expected: str) -> None:
    code = (
        "import os, sys; import medground.cli; "
        "print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)"
    )
    environment = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    }
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "engine")
    if preset is not None:
        environment["OPENBLAS_NUM_THREADS"] = preset
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment
    )
    threads, numpy_loaded = result.stdout.split()
    assert threads == expected
    # OpenBLAS reads the variable when NumPy loads it, so NumPy must not be loaded yet.
    assert numpy_loaded == "False"
