"""A parallel run killed with SIGKILL resumes to the same records as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medground.demo import write_demo

REPO = Path(__file__).resolve().parents[1]
IMAGES = 40
BATCH_SIZE = 2
BATCHES = IMAGES // BATCH_SIZE


def _command(manifest: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medground.cli",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--batch-size",
        str(BATCH_SIZE),
        "--workers",
        str(workers),
        "--no-preview",
        "--no-progress",
    ]


def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO / "engine"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _committed_batches(database: Path) -> int:
    if not database.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:
        # The run has not created the table yet, or holds a lock for a moment.
        return 0


def _run_to_end(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=_environment(), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def _kill_after_batches(command: list[str], database: Path, batches: int) -> int:
    """Start ``command``, SIGKILL it once ``batches`` batches are committed; return the count."""
    process = subprocess.Popen(
        command,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _committed_batches(database) < batches:
            if process.poll() is not None:
                pytest.fail(f"the run ended before it was killed: {process.stderr.read()!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {batches} committed batches in {database} after 120 s")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()  # type: ignore[union-attr]
    return _committed_batches(database)


def _wait_for_group_exit(group: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo(tmp_path_factory.mktemp("demo"), count=IMAGES, seed=11, size=256)


@pytest.fixture(scope="module")
def uninterrupted(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """records.jsonl of an uninterrupted run with one worker."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _run_to_end(_command(demo_manifest, out, workers=1))
    return (out / "demo-phantom" / "records.jsonl").read_bytes()


def test_killed_parallel_run_resumes(demo_manifest: Path, uninterrupted: bytes, tmp_path: Path):
    out = tmp_path / "out"
    command = _command(demo_manifest, out, workers=2)
    run_dir = out / "demo-phantom"

    committed = _kill_after_batches(command, run_dir / "run.sqlite", batches=3)
    assert 3 <= committed < BATCHES, f"{committed} of {BATCHES} batches committed at the kill"
    assert not (run_dir / "records.jsonl").exists()

    result = _run_to_end(command)
    assert f"{committed} batch(es) reused" in result.stdout

    resumed = (run_dir / "records.jsonl").read_bytes()
    ids = [json.loads(line)["id"] for line in resumed.splitlines()]
    assert len(ids) == len(set(ids)), "the resumed run wrote a record twice"
    assert resumed == uninterrupted


def test_killed_run_leaves_no_workers(demo_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = _command(demo_manifest, out, workers=2)
    process = subprocess.Popen(
        command,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    group = process.pid
    try:
        deadline = time.monotonic() + 120
        while _committed_batches(out / "demo-phantom" / "run.sqlite") < 1:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the run ended or stalled before its first batch was committed")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        # Pool workers poll for their parent once a second; give them a few polls.
        assert _wait_for_group_exit(group, timeout=10), "pool workers outlived the killed run"
    finally:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def test_resume_with_other_worker_count(demo_manifest: Path, uninterrupted: bytes, tmp_path: Path):
    out = tmp_path / "out"
    _kill_after_batches(
        _command(demo_manifest, out, workers=2), out / "demo-phantom" / "run.sqlite", 2
    )
    _run_to_end(_command(demo_manifest, out, workers=1))
    assert (out / "demo-phantom" / "records.jsonl").read_bytes() == uninterrupted
