"""`mgr run` with the VLM synthesiser and the visual judge, against a loopback fake server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fake_openai_server import (
    Behaviour,
    FakeOpenAIServer,
    RecordedRequest,
    json_reply,
    rate_limited,
    text_reply,
)
from medground.cli import main
from medground.config.errors import ConfigError
from medground.demo import write_demo
from medground.resources import resource_dir
from medground.runner import load_pipeline
from medground.vlm.stages import VlmOverrides
from vlm_helpers import API_KEY, API_KEY_ENV, MODEL, object_ids_in, scan_for_secret

REPO = Path(__file__).resolve().parents[1]
JUDGE_MODEL = "openai/fake-judge"
GOOD_VERDICT = {"supported": True, "unique": True, "confidence": 0.9, "reason": "The box fits."}


def provider_yaml(base_url: str, model: str = MODEL, indent: str = "    ", **extra: Any) -> str:
    """Return provider settings for the fake server as YAML lines at ``indent``."""
    settings: dict[str, Any] = {
        "model": model,
        "api_base": base_url,
        "api_key_env": API_KEY_ENV,
        "timeout_s": 5,
        "max_retries": 2,
        "max_concurrency": 4,
        "backoff": {"base_s": 0.01, "max_s": 0.05, "max_retry_after_s": 5},
        "price": {"input_per_1m_usd": 1.0, "output_per_1m_usd": 2.0},
        "max_image_side_px": 64,
        **extra,
    }
    return "".join(f"{indent}{key}: {json.dumps(value)}\n" for key, value in settings.items())


def vlm_manifest(
    data: Path,
    base_url: str,
    *,
    judge: bool = True,
    synth_extra: str = "",
    provider_extra: dict[str, Any] | None = None,
) -> Path:
    """Append a VLM synthesiser (and a judge) to the demo manifest in ``data``."""
    manifest = data / "demo.yaml"
    text = manifest.read_text(encoding="utf-8")
    text += "synthesizer:\n  kind: vlm\n" + synth_extra + "  provider:\n"
    text += provider_yaml(base_url, **(provider_extra or {}))
    if judge:
        # The judge's provider comes from a file, as a shared endpoint would.
        (data / "judge-provider.yaml").write_text(
            provider_yaml(base_url, model=JUDGE_MODEL, indent="", **(provider_extra or {})),
            encoding="utf-8",
        )
        text += "judge:\n  provider_file: judge-provider.yaml\n"
    manifest.write_text(text, encoding="utf-8")
    return manifest


def is_judge_prompt(request: RecordedRequest) -> bool:
    return "Query:" in request.prompt_text()


def query_of(request: RecordedRequest) -> str:
    text = request.prompt_text()
    return text.split('Query: "', 1)[1].split('"', 1)[0]


def class_of(object_id: str) -> str:
    return object_id.rsplit("-", 1)[0]


def responder(request: RecordedRequest) -> Behaviour:
    """Answer synthesis prompts with one query for the first object, judges with a pass."""
    if is_judge_prompt(request):
        return json_reply(GOOD_VERDICT)
    first = object_ids_in(request)[0]
    words = {"lesion": "bright lesion", "cyst": "dark cyst"}[class_of(first)]
    return json_reply(
        {"queries": [{"query": f"the {words}", "task": "single", "object_ids": [first]}]}
    )


def strict_judge(request: RecordedRequest) -> Behaviour:
    """Like :func:`responder`, but the judge finds every query unsupported."""
    if is_judge_prompt(request):
        reason = f"Nothing in the box matches '{query_of(request)}'."
        return json_reply({**GOOD_VERDICT, "supported": False, "reason": reason})
    return responder(request)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder, expected_api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write_demo(folder, count=3, size=256)
    return folder


def run_cli(*args: str | Path, verbose: bool = False) -> Result:
    flags = ["-v"] if verbose else ["-q"]
    return CliRunner().invoke(
        main, [*flags, "run", *map(str, args), "--no-preview", "--workers", "1"]
    )


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def rejections(run_dir: Path) -> list[dict[str, Any]]:
    import polars as pl

    return pl.read_parquet(run_dir / "rejected.parquet").to_dicts()


# -- (a) records with provenance and the judge's verdict ----------------------------------


def test_vlm_run_records_provenance(server: FakeOpenAIServer, data: Path, tmp_path: Path) -> None:
    manifest = vlm_manifest(data, "http://127.0.0.1:9/v1")
    out = tmp_path / "out"

    result = run_cli(manifest, "--out", out, "--api-base", server.base_url)

    assert result.exit_code == 0, result.output
    records = read_records(out / "demo-phantom")
    assert records, "the run accepted no record"
    prompt_sha = hashlib.sha256((resource_dir("prompts") / "vlm_synthesis.j2").read_bytes())
    judge_sha = hashlib.sha256((resource_dir("prompts") / "vlm_judge.j2").read_bytes())
    for record in records:
        assert record["provenance"]["synthesizer"] == "vlm"
        assert record["provenance"]["model"] == MODEL
        assert record["provenance"]["prompt_sha256"] == prompt_sha.hexdigest()
        verdict = record["verification"]["judge"]
        assert verdict["verdict"] == "pass"
        assert verdict["model"] == JUDGE_MODEL
        assert verdict["reason"] == "The box fits."
        assert verdict["prompt_sha256"] == judge_sha.hexdigest()
        assert "cached" not in verdict


def test_vlm_run_report_costs(server: FakeOpenAIServer, data: Path, tmp_path: Path) -> None:
    manifest = vlm_manifest(data, server.base_url)
    out = tmp_path / "out"

    result = run_cli(manifest, "--out", out)

    assert result.exit_code == 0, result.output
    report = (out / "demo-phantom" / "report.md").read_text(encoding="utf-8")
    assert "cost: 0 USD" not in report
    assert f"visual judge: model `{JUDGE_MODEL}`" in report
    assert f"vlm, model `{MODEL}`" in report
    assert "## VLM calls and cost" in report
    assert "| **synthesis** |" in report
    assert "| **judge** |" in report
    assert "## Visual judge" in report


def test_judge_model_option_adds_judge(
    server: FakeOpenAIServer, data: Path, tmp_path: Path
) -> None:
    manifest = vlm_manifest(data, server.base_url, judge=False)
    out = tmp_path / "out"

    result = run_cli(manifest, "--out", out, "--judge-model", "openai/cli-judge")

    assert result.exit_code == 0, result.output
    records = read_records(out / "demo-phantom")
    assert records
    assert {r["verification"]["judge"]["model"] for r in records} == {"openai/cli-judge"}


def test_template_option_overrides_vlm(
    server: FakeOpenAIServer, data: Path, tmp_path: Path
) -> None:
    manifest = vlm_manifest(data, server.base_url, judge=False)
    out = tmp_path / "out"

    result = run_cli(manifest, "--out", out, "--synthesizer", "template")

    assert result.exit_code == 0, result.output
    assert server.request_count == 0
    records = read_records(out / "demo-phantom")
    assert {r["provenance"]["synthesizer"] for r in records} == {"template"}
    report = (out / "demo-phantom" / "report.md").read_text(encoding="utf-8")
    assert "cost: 0 USD" in report
    assert "visual judge: skipped" in report


def test_vlm_chosen_target_gets_built(tmp_path: Path, data: Path) -> None:
    def pick_two(request: RecordedRequest) -> Behaviour:
        if is_judge_prompt(request):
            return json_reply(GOOD_VERDICT)
        ids = object_ids_in(request)
        if len(ids) < 2:
            return responder(request)
        return json_reply(
            {"queries": [{"query": "both findings", "task": "relation", "object_ids": ids[:2]}]}
        )

    with FakeOpenAIServer(pick_two, expected_api_key=API_KEY) as srv:
        manifest = vlm_manifest(data, srv.base_url, judge=False)
        result = run_cli(manifest, "--out", tmp_path / "out")

    run_dir = tmp_path / "out" / "demo-phantom"
    # Exit status 1 only means that no record was accepted.
    assert result.exit_code == (0 if read_records(run_dir) else 1), result.output
    chosen = [
        *[r["id"] for r in read_records(run_dir)],
        *[r["key"] for r in rejections(run_dir) if r["stage"] in ("rules", "judge")],
    ]
    assert any("+" in key for key in chosen), chosen
    stats = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
    assert sum(batch["vlm_targets"] for batch in stats) > 0


# -- (b) kill and resume ------------------------------------------------------------------


class GatedResponder:
    """A responder that can hold requests, and records the body hash of each one it replies to."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.abandon = False
        self.waiting = 0
        self.answered: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Behaviour:
        with self._lock:
            self.waiting += 1
        self.open.wait()
        with self._lock:
            self.waiting -= 1
            if self.abandon:
                # The client was killed while this request waited, so it gets no real reply.
                return Behaviour(status=500, error_message="client gone")
            body = json.dumps(request.body, sort_keys=True).encode()
            self.answered.append(hashlib.sha256(body).hexdigest())
        return responder(request)


def _subprocess_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO / "engine"), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        API_KEY_ENV: API_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def _command(manifest: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medground.cli",
        "-v",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--no-preview",
        "--no-progress",
    ]


def _committed_batches(database: Path) -> int:
    if not database.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _run_to_end(command: list[str]) -> str:
    result = subprocess.run(
        command, env=_subprocess_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_killed_run_resumes_same_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_demo(data, count=5, size=256)
    gate = GatedResponder()
    with FakeOpenAIServer(gate, expected_api_key=API_KEY) as srv:
        manifest = vlm_manifest(data, srv.base_url)
        logs = [_run_to_end(_command(manifest, tmp_path / "whole"))]
        gate.answered.clear()

        out = tmp_path / "killed"
        database = out / "demo-phantom" / "run.sqlite"
        process = subprocess.Popen(
            _command(manifest, out),
            env=_subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while _committed_batches(database) < 2:
                assert process.poll() is None, "the run ended before it was killed"
                assert time.monotonic() < deadline, "no 2 committed batches after 120 s"
                time.sleep(0.01)
            # Hold the next requests, so the kill hits a run that waits for a reply.
            gate.open.clear()
            while gate.waiting == 0 and process.poll() is None:
                time.sleep(0.01)
            # Replies sent just before the gate closed reach the cache meanwhile.
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            with gate._lock:
                gate.abandon = True
            gate.open.set()
            stdout, stderr = process.communicate()
            logs.append(stdout.decode() + stderr.decode())
        committed = _committed_batches(database)
        assert 2 <= committed < 5

        time.sleep(0.2)
        with gate._lock:
            gate.abandon = False
        logs.append(_run_to_end(_command(manifest, out)))

    whole = (tmp_path / "whole" / "demo-phantom" / "records.jsonl").read_bytes()
    resumed = (out / "demo-phantom" / "records.jsonl").read_bytes()
    assert whole, "the uninterrupted run wrote no records"
    assert resumed == whole
    repeated = [digest for digest, count in Counter(gate.answered).items() if count > 1]
    assert repeated == [], f"{len(repeated)} request(s) with a reply sent again after the kill"
    for log in logs:
        assert API_KEY not in log
    assert scan_for_secret(tmp_path / "whole") == []
    assert scan_for_secret(out) == []


# -- (c) the API key is never written ----------------------------------------------------


def test_api_key_not_in_files_or_logs(
    server: FakeOpenAIServer, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = vlm_manifest(data, server.base_url)
    out = tmp_path / "out"
    # A server error and a rate limit make the client log retries with their messages.
    server.script(
        Behaviour(status=500, error_message=f"upstream said Bearer {API_KEY}"),
        rate_limited(retry_after=0.05),
    )
    caplog.set_level(logging.DEBUG)

    result = run_cli(manifest, "--out", out, verbose=True)

    assert result.exit_code == 0, result.output
    assert scan_for_secret(tmp_path) == []
    assert API_KEY not in result.output
    assert API_KEY not in caplog.text
    assert "retrying" in caplog.text


# -- (d) faults -----------------------------------------------------------------------------


def test_retry_after_429_is_retried(server: FakeOpenAIServer, data: Path, tmp_path: Path) -> None:
    manifest = vlm_manifest(data, server.base_url, judge=False)
    server.script(rate_limited(retry_after=0.2), rate_limited(retry_after=0.2))

    result = run_cli(manifest, "--out", tmp_path / "out", "--batch-size", "1")

    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "out" / "demo-phantom"
    assert read_records(run_dir)
    assert not [r for r in rejections(run_dir) if r["rule_id"].startswith("vlm.")]
    with sqlite3.connect(run_dir / "run.sqlite") as connection:
        outcomes = dict(
            connection.execute("SELECT outcome, COUNT(*) FROM vlm_calls GROUP BY outcome")
        )
    assert outcomes["vlm.rate_limited"] == 2


@pytest.mark.parametrize(
    ("reply", "rule_id"),
    [
        (text_reply('{"queries": [{"query": "the lesion", "task": '), "format.not_json"),
        (
            json_reply(
                {"queries": [{"query": "the lesion", "task": "single", "object_ids": ["o99"]}]}
            ),
            "format.unknown_object_id",
        ),
    ],
    ids=["malformed-json", "unknown-object-id"],
)
def test_invalid_reply_is_format_rejection(
    server: FakeOpenAIServer, data: Path, tmp_path: Path, reply: Behaviour, rule_id: str
) -> None:
    manifest = vlm_manifest(
        data, server.base_url, judge=False, synth_extra="  retry_on_invalid: false\n"
    )
    server.script(reply)

    result = run_cli(manifest, "--out", tmp_path / "out", "--batch-size", "1")

    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "out" / "demo-phantom"
    found = [r for r in rejections(run_dir) if r["rule_id"] == rule_id]
    assert len(found) == 1
    assert found[0]["stage"] == "format"
    assert found[0]["image_key"] == "demo-phantom/case000"
    assert read_records(run_dir), "the other images gave no record"


def test_auth_failure_stops_cleanly(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_ENV, "sk-test-WRONG456")
    with FakeOpenAIServer(responder, expected_api_key=API_KEY) as srv:
        manifest = vlm_manifest(data, srv.base_url)
        result = run_cli(manifest, "--out", tmp_path / "out", "--batch-size", "1")
        requests = srv.request_count

    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert "vlm.auth_failed" in result.output
    assert "api_key_env" in result.output
    assert "sk-test-WRONG456" not in result.output
    assert requests == 1
    run_dir = tmp_path / "out" / "demo-phantom"
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "Run stopped before its last batch" in report
    assert read_records(run_dir) == []


def test_auth_failure_resumes_after_fix(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAIServer(responder, expected_api_key=API_KEY) as srv:
        manifest = vlm_manifest(data, srv.base_url, judge=False)
        monkeypatch.setenv(API_KEY_ENV, "sk-test-WRONG456")
        stopped = run_cli(manifest, "--out", tmp_path / "out")
        monkeypatch.setenv(API_KEY_ENV, API_KEY)
        fixed = run_cli(manifest, "--out", tmp_path / "out")

    assert stopped.exit_code == 3, stopped.output
    assert fixed.exit_code == 0, fixed.output
    run_dir = tmp_path / "out" / "demo-phantom"
    assert read_records(run_dir)
    assert not [r for r in rejections(run_dir) if r["rule_id"] == "vlm.auth_failed"]


def test_cost_cap_stops_run(server: FakeOpenAIServer, data: Path, tmp_path: Path) -> None:
    # Each fake reply costs 100 * 1e-6 + 20 * 2e-6 = 0.00014 USD.
    manifest = vlm_manifest(
        data, server.base_url, judge=False, provider_extra={"cost_cap_usd": 0.0002}
    )

    result = run_cli(manifest, "--out", tmp_path / "out", "--batch-size", "1")

    assert result.exit_code == 3, result.output
    assert "cost cap" in result.output
    assert "Traceback" not in result.output
    run_dir = tmp_path / "out" / "demo-phantom"
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "reached the cost cap" in report
    with sqlite3.connect(run_dir / "run.sqlite") as connection:
        committed = connection.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    assert committed == 2
    assert len({r["id"].rsplit("/", 2)[0] for r in read_records(run_dir)}) <= 2


# -- (e) the judge rejects ------------------------------------------------------------------


def test_unsupported_verdict_is_judge_rejection(data: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer(strict_judge, expected_api_key=API_KEY) as srv:
        manifest = vlm_manifest(data, srv.base_url)
        result = run_cli(manifest, "--out", tmp_path / "out")

    # The judge rejects every candidate, so the run accepts nothing and exits with 1.
    assert result.exit_code == 1, result.output
    assert "no record was accepted" in result.output
    run_dir = tmp_path / "out" / "demo-phantom"
    judged = [r for r in rejections(run_dir) if r["stage"] == "judge"]
    assert judged
    for rejection in judged:
        assert rejection["rule_id"] == "judge.unsupported"
        assert f"Nothing in the box matches '{rejection['query']}'." in rejection["message"]
    assert read_records(run_dir) == []
    stats = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
    assert sum(b["judge_verdicts"].get("fail", 0) for b in stats) == len(judged)


# -- manifest keys and options --------------------------------------------------------------


def test_provider_file_error_located(data: Path, tmp_path: Path) -> None:
    manifest = vlm_manifest(data, "http://127.0.0.1:9/v1")
    provider_file = data / "judge-provider.yaml"
    provider_file.write_text(
        provider_file.read_text(encoding="utf-8") + "modle: x\n", encoding="utf-8"
    )

    with pytest.raises(ConfigError, match=r"judge-provider.yaml:\d+:1: modle: unknown key 'modle'"):
        load_pipeline(manifest)


def test_provider_file_missing(data: Path) -> None:
    manifest = vlm_manifest(data, "http://127.0.0.1:9/v1")
    (data / "judge-provider.yaml").unlink()

    with pytest.raises(ConfigError, match=r"judge.provider_file: provider file 'judge-provider"):
        load_pipeline(manifest)


@pytest.mark.parametrize(
    ("block", "pattern"),
    [
        pytest.param("synthesizer:\n  kind: vlm\n", "missing provider settings", id="no-provider"),
        pytest.param(
            "synthesizer:\n  kind: vlm\n  provider: {model: openai/gpt-4o}\n"
            "  provider_file: p.yaml\n",
            "both 'provider' and 'provider_file'",
            id="both-sources",
        ),
        pytest.param(
            "synthesizer:\n  kind: vllm\n",
            r"synthesizer.kind: invalid value 'vllm' for 'kind'; did you mean 'vlm'\?",
            id="kind-typo",
        ),
        pytest.param(
            "synthesizer:\n  kind: vlm\n  provider: {model: openai/gpt-4o, api_key: sk-1}\n",
            r"synthesizer.provider.api_key: unknown key 'api_key'; did you mean 'api_key_env'\?",
            id="inline-key",
        ),
        pytest.param(
            "synthesizer:\n  phrasings: template_queries.yaml\n  prompt_template: x\n",
            "unknown key 'prompt_template'",
            id="template-without-kind",
        ),
    ],
)
def test_invalid_synthesizer_block(data: Path, block: str, pattern: str) -> None:
    manifest = data / "demo.yaml"
    manifest.write_text(manifest.read_text(encoding="utf-8") + block, encoding="utf-8")

    with pytest.raises(ConfigError, match=pattern) as caught:
        load_pipeline(manifest)

    assert "sk-1" not in str(caught.value)


def test_vlm_option_needs_model(data: Path) -> None:
    with pytest.raises(ConfigError, match="--synthesizer vlm needs a model"):
        load_pipeline(data / "demo.yaml", overrides=VlmOverrides(synthesizer="vlm"))


def test_api_base_without_vlm_rejected(data: Path) -> None:
    overrides = VlmOverrides(api_base="http://127.0.0.1:9/v1")

    with pytest.raises(ConfigError, match="this run has none; add --model NAME"):
        load_pipeline(data / "demo.yaml", overrides=overrides)


def test_model_option_with_template_rejected(data: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["run", str(data / "demo.yaml"), "--synthesizer", "template", "--model", "openai/x"],
    )

    assert result.exit_code == 2
    assert "drop --synthesizer template" in result.output


def test_model_option_selects_vlm(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    pipeline = load_pipeline(
        data / "demo.yaml",
        overrides=VlmOverrides(model="openai/gpt-4o", api_base="http://127.0.0.1:9/v1"),
    )
    try:
        assert pipeline.synthesizer.name == "vlm"
        assert pipeline.vlm.synth_config is not None
        assert pipeline.vlm.synth_config.provider.model == "openai/gpt-4o"
        assert pipeline.vlm.synth_config.provider.api_base == "http://127.0.0.1:9/v1"
        assert pipeline.vlm.judge is None
    finally:
        pipeline.close()
