"""Run state in SQLite: counts of inputs rejected whole and of parts left out."""

from __future__ import annotations

from pathlib import Path

from medground.store import RunStore


def _rejection(key: str, image_key: str | None, stage: str, rule_id: str) -> dict[str, str | None]:
    return {"key": key, "image_key": image_key, "stage": stage, "rule_id": rule_id,
            "message": f"{key}: {rule_id}"}


def test_input_counts_leave_out_parts(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run.sqlite")
    try:
        store.commit_batch(0, 4, [], [
            _rejection("ds/a.png", None, "discover", "discover.unpaired_image"),
            _rejection("ds/b", "ds/b", "load", "load.unreadable_image"),
            _rejection("ds/c", "ds/c", "objects", "objects.empty_mask"),
            _rejection("ds/d", "ds/d", "objects", "objects.empty_mask"),
            # Parts of inputs that still have targets:
            _rejection("ds/e/removed/lesion/3-4", "ds/e", "objects", "objects.min_object_size"),
            _rejection("ds/e/roi/e_R2_Label.bmp", "ds/e", "load", "load.skipped_label"),
            # A candidate query, rejected after its input gave a target:
            _rejection("ds/e/t0/q0", "ds/e", "rules", "geometry.tiny_box"),
        ], {"images": 4})
        assert store.input_rejection_counts() == {
            "objects.empty_mask": 2,
            "discover.unpaired_image": 1,
            "load.unreadable_image": 1,
        }
        assert store.skipped_file_count() == 1
    finally:
        store.close()


def test_stray_temporaries_are_removed(tmp_path: Path) -> None:
    from medground.store import remove_stray_temporaries

    stray = tmp_path / ".records.jsonl.0123456789abcdef0123456789abcdef.tmp"
    stray.write_text("half a record")
    user_files = [tmp_path / "records.jsonl", tmp_path / ".notes.tmp", tmp_path / "a.tmp"]
    for path in user_files:
        path.write_text("user data")
    assert remove_stray_temporaries(tmp_path) == [stray]
    assert not stray.exists()
    assert all(path.exists() for path in user_files)


def test_rerun_removes_stray_temporaries(tmp_path: Path) -> None:
    from support import invoke, tiny_dataset

    manifest = tiny_dataset(tmp_path)
    out = tmp_path / "out"
    assert invoke("run", manifest, "--out", out).exit_code == 0
    # What a SIGKILL during the final write of samples.parquet leaves behind:
    stray = out / "tiny" / ".samples.parquet.0123456789abcdef0123456789abcdef.tmp"
    stray.write_bytes(b"PAR1")
    result = invoke("run", manifest, "--out", out)
    assert result.exit_code == 0, result.output
    assert not stray.exists()
    assert (out / "tiny" / "samples.parquet").is_file()
