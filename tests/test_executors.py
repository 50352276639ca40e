"""Executors: item order, start-up errors, and identical records for every executor."""

from __future__ import annotations

import builtins
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from medground.cli import main
from medground.demo import write_demo
from medground.executors import (
    DaskExecutor,
    ExecutorError,
    InlineExecutor,
    ProcessExecutor,
    make_executor,
)
from medground.runner import RunOptions, run

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """Return the shared real-data folder: ``$MGR_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("MGR_SHARED_DATA", REPO.parent / "shared" / "data"))


def _dask_installed() -> bool:
    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        return False
    return True


needs_dask = pytest.mark.skipif(
    not _dask_installed(), reason="dask.distributed is not installed (the 'dask' extra)"
)


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    """Address of a two-worker LocalCluster on 127.0.0.1, shared by this module's tests."""
    if not _dask_installed():
        pytest.skip("dask.distributed is not installed (the 'dask' extra)")
    from dask.distributed import LocalCluster

    cluster = LocalCluster(
        host="127.0.0.1",
        dashboard_address=None,
        n_workers=2,
        threads_per_worker=1,
        processes=True,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


# -- the executor interface -------------------------------------------------------------

ITEMS = [7, 0, 12, 3, 3, 20, 1, 9, 15, 2, 4]


def test_inline_map_keeps_order() -> None:
    with InlineExecutor() as executor:
        assert executor.map(math.factorial, ITEMS) == [math.factorial(n) for n in ITEMS]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_process_pool_map_keeps_order(workers: int) -> None:
    with ProcessExecutor(workers) as executor:
        first = executor.map(math.factorial, ITEMS)
        second = executor.map(math.factorial, ITEMS[::-1])
    assert first == [math.factorial(n) for n in ITEMS]
    assert second == [math.factorial(n) for n in ITEMS[::-1]]


def test_process_pool_map_empty_batch() -> None:
    with ProcessExecutor(2) as executor:
        assert executor.map(math.factorial, []) == []


def test_process_pool_map_outside_with() -> None:
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        ProcessExecutor(2).map(math.factorial, ITEMS)


@needs_dask
def test_dask_map_keeps_order(dask_scheduler: str) -> None:
    with DaskExecutor(2, scheduler=dask_scheduler) as executor:
        assert executor.map(math.factorial, ITEMS) == [math.factorial(n) for n in ITEMS]


@pytest.mark.parametrize(
    ("kind", "workers", "scheduler", "expected"),
    [
        ("local", 1, None, InlineExecutor),
        ("local", 4, None, ProcessExecutor),
        ("dask", 2, None, DaskExecutor),
        ("dask", 2, "tcp://127.0.0.1:8786", DaskExecutor),
    ],
)
def test_make_executor_kinds(
    kind: str, workers: int, scheduler: str | None, expected: type
) -> None:
    assert isinstance(make_executor(kind, workers, scheduler), expected)  # type: ignore[arg-type]


def test_make_executor_scheduler_needs_dask() -> None:
    with pytest.raises(ExecutorError, match="--scheduler .* needs --executor dask"):
        make_executor("local", 2, "tcp://127.0.0.1:8786")


# -- without the dask extra -----------------------------------------------------------


@pytest.fixture
def without_dask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import dask...`` fail as it does when the extra is not installed."""
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "dask" or name.startswith("dask."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    for module in [m for m in sys.modules if m == "dask" or m.startswith("dask.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.usefixtures("without_dask")
def test_dask_executor_without_extra() -> None:
    with (
        pytest.raises(ExecutorError, match=r"pip install 'medground\[dask\]'"),
        DaskExecutor(2),
    ):
        pass


@pytest.mark.usefixtures("without_dask")
def test_cli_dask_without_extra(tmp_path: Path) -> None:
    manifest = write_demo(tmp_path / "data", count=2, seed=0, size=256)
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--out", str(tmp_path / "out"), "--executor", "dask"],
    )
    assert result.exit_code != 0
    assert "not installed" in result.output
    assert "pip install 'medground[dask]'" in result.output


def test_cli_scheduler_without_dask_executor(tmp_path: Path) -> None:
    manifest = write_demo(tmp_path / "data", count=2, seed=0, size=256)
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:1"],
    )
    assert result.exit_code != 0
    assert "needs --executor dask" in result.output


# -- identical outputs whatever the executor --------------------------------------------


def _demo_case(tmp_path: Path) -> tuple[Path, Path | None]:
    return write_demo(tmp_path / "data", count=23, seed=3, size=256), None


def _shared_case(name: str) -> tuple[Path, Path | None]:
    root = shared_data() / name
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} not found; set MGR_SHARED_DATA to its parent")
    return REPO / "datasets" / f"{name}.yaml", root


@pytest.fixture(params=["demo", "isbi2012-em-membrane", "kvasir-seg"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path | None]:
    """A manifest and a root override (``None`` keeps the manifest's root)."""
    if request.param == "demo":
        return _demo_case(tmp_path)
    return _shared_case(request.param)


def _run(
    manifest: Path, root: Path | None, out: Path, **executor_options: object
) -> tuple[bytes, bytes]:
    options = RunOptions(
        out_dir=out,
        root=root,
        batch_size=4,
        previews=False,
        progress=False,
        **executor_options,  # type: ignore[arg-type]
    )
    summary = run(manifest, options)
    return (summary.out / "records.jsonl").read_bytes(), (summary.out / "report.md").read_bytes()


def test_records_identical_for_1_and_2_workers(
    dataset: tuple[Path, Path | None], tmp_path: Path
) -> None:
    manifest, root = dataset
    single, _ = _run(manifest, root, tmp_path / "w1", workers=1)
    parallel, _ = _run(manifest, root, tmp_path / "w2", workers=2)
    assert single, "the run accepted no record, so the comparison would prove nothing"
    assert single == parallel


@needs_dask
def test_records_identical_on_dask(
    dataset: tuple[Path, Path | None], tmp_path: Path, dask_scheduler: str
) -> None:
    manifest, root = dataset
    local, _ = _run(manifest, root, tmp_path / "local", workers=1)
    on_dask, _ = _run(manifest, root, tmp_path / "dask", executor="dask", scheduler=dask_scheduler)
    assert local == on_dask


@needs_dask
def test_dask_local_cluster_started_by_run(tmp_path: Path) -> None:
    manifest, _ = _demo_case(tmp_path)
    local, _ = _run(manifest, None, tmp_path / "local", workers=1)
    on_dask, _ = _run(manifest, None, tmp_path / "dask", executor="dask", workers=2)
    assert local == on_dask


def test_wait_for_workers_in_stats(tmp_path: Path) -> None:
    manifest, _ = _demo_case(tmp_path)
    options = RunOptions(
        out_dir=tmp_path / "out", batch_size=8, previews=False, progress=False, workers=2
    )
    summary = run(manifest, options)
    stats = json.loads((summary.out / "stats.json").read_text())
    assert len(stats) == 3
    for batch in stats:
        assert {"load", "objects", "targets", "cues", "rules", "wait_for_workers"} <= set(
            batch["timings"]
        )
