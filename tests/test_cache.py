"""Tests of the VLM reply cache: keys, durability, concurrency and resume."""

from __future__ import annotations

import base64
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fake_openai_server import FakeOpenAIServer
from medground.cache import ResponseCache, cache_key
from medground.config.provider import VlmSynthConfig
from medground.synth.vlm import VlmSynthesizer
from vlm_helpers import (
    API_KEY,
    API_KEY_ENV,
    make_request,
    provider_config,
    scan_for_secret,
    synthesis_responder,
)

ENGINE_DIR = Path(__file__).resolve().parents[1] / "engine"
TESTS_DIR = Path(__file__).resolve().parent


def image_message(image_bytes: bytes, text: str = "Describe.") -> list[dict[str, Any]]:
    url = "data:image/png;base64," + base64.b64encode(image_bytes).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def key_for(**changes: Any) -> str:
    arguments: dict[str, Any] = {
        "stage": "synthesis",
        "model": "openai/fake-vlm",
        "api_base": "http://127.0.0.1:1/v1",
        "messages": image_message(b"png-bytes"),
        "params": {"temperature": 0.2, "max_tokens": 100},
    }
    arguments.update(changes)
    return cache_key(**arguments)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


def test_key_is_stable() -> None:
    assert key_for() == key_for(messages=image_message(b"png-bytes"))
    assert len(key_for()) == 64


@pytest.mark.parametrize(
    "changes",
    [
        {"messages": image_message(b"other-png-bytes")},
        {"messages": image_message(b"png-bytes", text="Describe again.")},
        {"model": "openai/other-vlm"},
        {"api_base": "http://127.0.0.1:2/v1"},
        {"params": {"temperature": 0.7, "max_tokens": 100}},
        {"params": {"temperature": 0.2, "max_tokens": 200}},
        {"stage": "judge"},
    ],
    ids=["image-bytes", "prompt-text", "model", "api-base", "temperature", "max-tokens", "stage"],
)
def test_key_changes_with_request(changes: dict[str, Any]) -> None:
    assert key_for(**changes) != key_for()


def test_put_is_visible_to_another_connection(tmp_path: Path) -> None:
    db = tmp_path / "run.sqlite"
    writer = ResponseCache(db)
    writer.put(
        "k1",
        stage="synthesis",
        model="m",
        content='{"a": 1}',
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=0.5,
        request_key="img1",
    )

    # A second connection reads the row while the writer is open, so it was committed.
    reader = ResponseCache(db)
    hit = reader.get("k1")
    assert hit is not None
    assert hit.content == '{"a": 1}'
    assert hit.cost_usd == 0.5
    assert reader.get("missing") is None


def test_database_uses_wal(tmp_path: Path) -> None:
    ResponseCache(tmp_path / "run.sqlite")
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"vlm_replies", "vlm_calls"} <= tables


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "run.sqlite")

    def write(index: int) -> None:
        cache.put(
            f"k{index}",
            stage="synthesis",
            model="m",
            content="{}",
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=0.01,
        )
        cache.record_call(stage="synthesis", model="m", outcome="ok", cost_usd=0.01)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, range(400)))

    assert cache.count() == 400
    assert cache.spent_usd() == pytest.approx(4.0)


def test_second_identical_batch_sends_nothing(tmp_path: Path) -> None:
    requests = [make_request(tmp_path, f"case{index}", seed=index) for index in range(4)]
    with FakeOpenAIServer(synthesis_responder, expected_api_key=API_KEY) as server:
        config = VlmSynthConfig(provider=provider_config(server))
        first = VlmSynthesizer(config, cache=ResponseCache(tmp_path / "run.sqlite"))
        candidates, rejections = first.synthesize(requests)
        assert server.request_count == 4

        second = VlmSynthesizer(config, cache=ResponseCache(tmp_path / "run.sqlite"))
        again, again_rejections = second.synthesize(requests)

    assert server.request_count == 4
    assert [c.query for c in again] == [c.query for c in candidates]
    assert all(c.extra["cache_hit"] for c in again)
    assert rejections == again_rejections == []
    assert second.client.usage()["synthesis"]["cache_hits"] == 4


def test_failures_are_not_cached(tmp_path: Path) -> None:
    requests = [
        make_request(tmp_path, "good"),
        make_request(tmp_path, "refuses", marker="fault:refusal", seed=1),
    ]
    with FakeOpenAIServer(synthesis_responder, expected_api_key=API_KEY) as server:
        config = VlmSynthConfig(provider=provider_config(server), retry_on_invalid=False)
        cache = ResponseCache(tmp_path / "run.sqlite")
        synthesizer = VlmSynthesizer(config, cache=cache)
        synthesizer.synthesize(requests)
        assert cache.count() == 1

        synthesizer.synthesize(requests)

    # The good reply came from the cache; the refusal was asked for again.
    assert server.request_count == 3
    assert cache.count() == 1


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    sys.path.insert(0, {tests!r})
    from vlm_helpers import make_request, provider_config
    from fake_openai_server import FakeOpenAIServer

    from medground.cache import ResponseCache
    from medground.config.provider import ProviderConfig, VlmSynthConfig
    from medground.synth.vlm import VlmSynthesizer

    tmp = Path(sys.argv[1])
    provider = ProviderConfig.model_validate_json(sys.argv[2])
    requests = [make_request(tmp, f"case{{i}}", seed=i) for i in range(6)]
    synth = VlmSynthesizer(VlmSynthConfig(provider=provider),
                           cache=ResponseCache(tmp / "run" / "run.sqlite"))
    print("started", flush=True)
    synth.synthesize(requests)
    print("finished", flush=True)
""")


def test_killed_run_resumes_without_repeating(tmp_path: Path) -> None:
    def slow(request: Any) -> Any:
        return dataclasses.replace(synthesis_responder(request), delay_s=0.3)

    db = tmp_path / "run" / "run.sqlite"
    with FakeOpenAIServer(slow, expected_api_key=API_KEY) as server:
        provider = provider_config(server, max_concurrency=1)
        script = tmp_path / "resume_run.py"
        script.write_text(RESUME_SCRIPT.format(tests=str(TESTS_DIR)))
        env = {
            **os.environ,
            "PYTHONPATH": str(ENGINE_DIR),
            API_KEY_ENV: API_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        process = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), provider.model_dump_json()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            cached_before_kill = 0
            while cached_before_kill < 2:
                assert time.monotonic() < deadline, "the child run cached nothing in 60 s"
                assert process.poll() is None, process.stderr.read().decode()
                time.sleep(0.05)
                if db.exists():
                    cached_before_kill = ResponseCache(db).count()
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        sent_by_killed_run = server.request_count
        cached = ResponseCache(db).count()
        assert 2 <= cached < 6

        requests = [make_request(tmp_path, f"case{index}", seed=index) for index in range(6)]
        synthesizer = VlmSynthesizer(VlmSynthConfig(provider=provider), cache=ResponseCache(db))
        candidates, rejections = synthesizer.synthesize(requests)

    assert len(candidates) == 6
    assert rejections == []
    # The resumed run requests only the replies not cached when the first run died.
    assert server.request_count - sent_by_killed_run == 6 - cached
    assert scan_for_secret(tmp_path / "run") == []
