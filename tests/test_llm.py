"""Tests of the VLM client against the loopback fake server, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import ValidationError

from fake_openai_server import (
    FakeOpenAIServer,
    auth_error,
    hang,
    json_reply,
    malformed_body,
    rate_limited,
    server_error,
    text_reply,
)
from medground.cache import ResponseCache
from medground.config.provider import BackoffConfig, PriceConfig, ProviderConfig
from medground.vlm.client import (
    CostCapReached,
    InvalidReply,
    ProviderConfigError,
    VlmCallError,
    VlmClient,
    parse_retry_after,
)
from medground.vlm.ratelimit import RateLimiter
from vlm_helpers import API_KEY, API_KEY_ENV, provider_config

MESSAGES = [{"role": "user", "content": "Reply with JSON."}]


def parse_object(content: str) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise InvalidReply("format.not_json", str(exc)) from exc
    if not isinstance(data, dict):
        raise InvalidReply("format.schema", "not an object")
    return data


def complete(client: VlmClient, request_key: str = "img1", messages: Any = None) -> Any:
    return asyncio.run(
        client.complete(
            stage="synthesis",
            request_key=request_key,
            messages=messages or MESSAGES,
            parse=parse_object,
        )
    )


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    return API_KEY


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(
        lambda request: json_reply({"ok": True}), expected_api_key=API_KEY
    ) as srv:
        yield srv


def test_success_sends_key_and_counts_usage(server: FakeOpenAIServer, tmp_path: Any) -> None:
    cache = ResponseCache(tmp_path / "run.sqlite")
    client = VlmClient(provider_config(server), cache=cache)

    reply = complete(client)

    assert reply.parsed == {"ok": True}
    assert reply.cached is False
    assert server.request_count == 1
    assert server.requests[0].had_credentials
    assert "authorization" not in server.requests[0].headers
    # 100 input tokens at $1/M plus 20 output tokens at $2/M.
    assert reply.cost_usd == pytest.approx(100e-6 + 40e-6)
    usage = client.usage()["synthesis"]
    assert usage["requests"] == 1
    assert usage["prompt_tokens"] == 100
    assert usage["completion_tokens"] == 20
    assert cache.call_summary()[0]["outcome"] == "ok"
    assert cache.spent_usd() == pytest.approx(140e-6)


def test_request_carries_configured_parameters(server: FakeOpenAIServer) -> None:
    config = provider_config(
        server, temperature=0.0, max_tokens=77, extra_headers={"X-Run-Label": "unit"}
    )
    complete(VlmClient(config))

    body = server.requests[0].body
    assert body["model"] == "fake-vlm"
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.0
    assert body["response_format"] == {"type": "json_object"}
    assert server.requests[0].headers["x-run-label"] == "unit"


def test_known_model_cost_from_litellm(server: FakeOpenAIServer) -> None:
    # openai/gpt-4o is in litellm's local cost map: $2.50/M input, $10/M output.
    config = provider_config(server, model="openai/gpt-4o", price=None)
    reply = complete(VlmClient(config))
    assert reply.cost_usd == pytest.approx(100 * 2.5e-6 + 20 * 10e-6)


def test_unknown_model_without_price_raises(server: FakeOpenAIServer) -> None:
    config = provider_config(server, price=None)
    with pytest.raises(ProviderConfigError, match="set provider.price.input_per_1m_usd"):
        VlmClient(config)


def test_missing_key_variable_raises(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(ProviderConfigError, match=f"environment variable {API_KEY_ENV} is not"):
        VlmClient(provider_config(server))


def test_local_server_without_key_variable_raises(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderConfigError, match="api_key_env: LOCAL_VLM_KEY"):
        VlmClient(provider_config(server, api_key_env=None))


def test_rate_limit_honours_retry_after(server: FakeOpenAIServer) -> None:
    server.script(rate_limited(retry_after=1))
    client = VlmClient(provider_config(server))

    started = time.monotonic()
    reply = complete(client)
    elapsed = time.monotonic() - started

    assert reply.parsed == {"ok": True}
    assert server.request_count == 2
    gap = server.requests[1].received_at - server.requests[0].received_at
    assert gap >= 0.95
    assert elapsed >= 0.95
    assert client.usage()["synthesis"]["retries"] == 1


def test_retry_after_pauses_other_requests(server: FakeOpenAIServer) -> None:
    server.script(rate_limited(retry_after=0.6))
    client = VlmClient(provider_config(server, max_concurrency=2))

    async def two_requests() -> None:
        first = asyncio.create_task(
            client.complete(
                stage="synthesis", request_key="a", messages=MESSAGES, parse=parse_object
            )
        )
        deadline = time.monotonic() + 5
        while not client.usage().get("synthesis", {}).get("retries"):
            assert time.monotonic() < deadline, "the 429 never reached the client"
            await asyncio.sleep(0.01)
        second = client.complete(
            stage="synthesis",
            request_key="b",
            messages=[{"role": "user", "content": "other JSON"}],
            parse=parse_object,
        )
        await asyncio.gather(first, second)

    # The first request gets the 429; the second, started once the client has seen it,
    # waits until the pause ends instead of hitting the quota again.
    asyncio.run(two_requests())
    times = [request.received_at for request in server.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.55
    assert times[2] - times[0] >= 0.55


def test_retry_after_longer_than_limit_fails(server: FakeOpenAIServer) -> None:
    server.script(rate_limited(retry_after=600))
    client = VlmClient(provider_config(server))

    started = time.monotonic()
    with pytest.raises(VlmCallError, match="max_retry_after_s") as caught:
        complete(client)

    assert caught.value.rule_id == "vlm.rate_limited"
    assert caught.value.retryable
    assert time.monotonic() - started < 2
    assert server.request_count == 1


@pytest.mark.parametrize(
    ("fault", "rule_id", "timeout_s"),
    [
        # A short timeout only where the fault is a hang; elsewhere a slow machine must
        # not turn the retried request into a second, unexpected timeout.
        (server_error(500), "vlm.server_error", 10.0),
        (server_error(503), "vlm.server_error", 10.0),
        (malformed_body(), "vlm.server_error", 10.0),
        (hang(3), "vlm.timeout", 0.5),
    ],
    ids=["http-500", "http-503", "body-not-json", "timeout"],
)
def test_transient_fault_is_retried(
    server: FakeOpenAIServer, fault: Any, rule_id: str, timeout_s: float, tmp_path: Any
) -> None:
    server.script(fault)
    cache = ResponseCache(tmp_path / "run.sqlite")
    client = VlmClient(provider_config(server, timeout_s=timeout_s), cache=cache)

    reply = complete(client)

    assert reply.parsed == {"ok": True}
    assert server.request_count == 2
    outcomes = [row["outcome"] for row in cache.call_summary()]
    assert rule_id in outcomes
    assert "ok" in outcomes


def test_persistent_fault_becomes_call_error(server: FakeOpenAIServer) -> None:
    server.script(*[server_error(500)] * 3)
    client = VlmClient(provider_config(server, max_retries=2))

    with pytest.raises(VlmCallError, match="after 3 tries") as caught:
        complete(client)

    assert caught.value.rule_id == "vlm.server_error"
    assert server.request_count == 3
    assert client.usage()["synthesis"]["failures"] == 1


def test_timeout_after_retries_is_rejected(server: FakeOpenAIServer) -> None:
    server.script(hang(3), hang(3))
    client = VlmClient(provider_config(server, timeout_s=0.3, max_retries=1))

    started = time.monotonic()
    with pytest.raises(VlmCallError) as caught:
        complete(client)

    assert caught.value.rule_id == "vlm.timeout"
    assert server.request_count == 2
    assert time.monotonic() - started < 2.5


def test_auth_error_fails_fast_without_retry(server: FakeOpenAIServer) -> None:
    server.script(auth_error())
    client = VlmClient(provider_config(server))

    with pytest.raises(VlmCallError) as first:
        complete(client, "a")
    with pytest.raises(VlmCallError, match="not sent") as second:
        complete(client, "b")

    assert first.value.rule_id == "vlm.auth_failed"
    assert second.value.rule_id == "vlm.auth_failed"
    assert server.request_count == 1


def test_wrong_key_is_auth_error(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "sk-test-WRONG")
    client = VlmClient(provider_config(server))
    with pytest.raises(VlmCallError) as caught:
        complete(client)
    assert caught.value.rule_id == "vlm.auth_failed"
    assert "sk-test-WRONG" not in caught.value.message


def test_invalid_reply_is_not_cached(server: FakeOpenAIServer, tmp_path: Any) -> None:
    server.script(text_reply("not json at all"), text_reply('{"ok": true}'))
    cache = ResponseCache(tmp_path / "run.sqlite")
    client = VlmClient(provider_config(server), cache=cache)

    with pytest.raises(InvalidReply) as caught:
        complete(client)
    assert caught.value.content == "not json at all"
    assert caught.value.cost_usd > 0
    assert cache.count() == 0

    assert complete(client).parsed == {"ok": True}
    assert cache.count() == 1
    assert complete(client).cached is True
    assert server.request_count == 2


def test_cost_cap_stops_new_requests(server: FakeOpenAIServer, tmp_path: Any) -> None:
    # Each reply costs $1: 100 input tokens at $10,000/M.
    price = PriceConfig(input_per_1m_usd=10_000, output_per_1m_usd=0)
    cache = ResponseCache(tmp_path / "run.sqlite")
    client = VlmClient(
        provider_config(server, price=price, cost_cap_usd=2.5, max_concurrency=1), cache=cache
    )

    for index in range(3):
        complete(client, f"img{index}", [{"role": "user", "content": f"JSON {index}"}])
    with pytest.raises(CostCapReached) as caught:
        complete(client, "img3", [{"role": "user", "content": "JSON 3"}])

    assert caught.value.spent_usd == pytest.approx(3.0)
    assert caught.value.cap_usd == 2.5
    assert server.request_count == 3
    assert cache.count() == 3


def test_cost_cap_counts_earlier_runs(server: FakeOpenAIServer, tmp_path: Any) -> None:
    price = PriceConfig(input_per_1m_usd=10_000, output_per_1m_usd=0)
    db = tmp_path / "run.sqlite"
    first = VlmClient(provider_config(server, price=price), cache=ResponseCache(db))
    complete(first, "a", [{"role": "user", "content": "JSON a"}])
    complete(first, "b", [{"role": "user", "content": "JSON b"}])

    resumed = VlmClient(
        provider_config(server, price=price, cost_cap_usd=2.0), cache=ResponseCache(db)
    )
    assert resumed.spent_usd == pytest.approx(2.0)
    # A cached reply is still served after the cap, because it costs nothing.
    assert complete(resumed, "a", [{"role": "user", "content": "JSON a"}]).cached
    with pytest.raises(CostCapReached):
        complete(resumed, "c", [{"role": "user", "content": "JSON c"}])
    assert server.request_count == 2


def test_clients_sharing_cache_share_budget(server: FakeOpenAIServer, tmp_path: Any) -> None:
    price = PriceConfig(input_per_1m_usd=10_000, output_per_1m_usd=0)
    cache = ResponseCache(tmp_path / "run.sqlite")
    synthesis = VlmClient(provider_config(server, price=price, cost_cap_usd=5.0), cache=cache)
    judge = VlmClient(provider_config(server, price=price, cost_cap_usd=1.5), cache=cache)

    complete(synthesis, "a", [{"role": "user", "content": "JSON a"}])
    complete(synthesis, "b", [{"role": "user", "content": "JSON b"}])

    # The judge's own cap of $1.50 is already passed by the run's $2 of synthesis.
    with pytest.raises(CostCapReached) as caught:
        asyncio.run(
            judge.complete(stage="judge", request_key="s1", messages=MESSAGES, parse=parse_object)
        )
    assert caught.value.spent_usd == pytest.approx(2.0)
    assert server.request_count == 2


def test_concurrency_is_bounded() -> None:
    with FakeOpenAIServer(lambda request: json_reply({"ok": True}, delay_s=0.15)) as server:
        client = VlmClient(provider_config(server, max_concurrency=2))

        async def batch() -> None:
            await asyncio.gather(
                *[
                    client.complete(
                        stage="synthesis",
                        request_key=str(index),
                        messages=[{"role": "user", "content": f"JSON {index}"}],
                        parse=parse_object,
                    )
                    for index in range(6)
                ]
            )

        asyncio.run(batch())
        assert server.request_count == 6
        assert server.max_in_flight == 2


def test_requests_per_minute_spaces_requests(server: FakeOpenAIServer) -> None:
    client = VlmClient(provider_config(server, requests_per_minute=300, max_concurrency=4))

    async def batch() -> None:
        await asyncio.gather(
            *[
                client.complete(
                    stage="synthesis",
                    request_key=str(index),
                    messages=[{"role": "user", "content": f"JSON {index}"}],
                    parse=parse_object,
                )
                for index in range(4)
            ]
        )

    asyncio.run(batch())
    times = sorted(request.received_at for request in server.requests)
    # 300 requests per minute is one request start every 0.2 s, so 4 starts span 0.6 s.
    assert times[-1] - times[0] >= 0.55


def test_secret_stays_out_of_logs_and_errors(
    server: FakeOpenAIServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(server_error(500), auth_error())
    cache = ResponseCache(tmp_path / "run.sqlite")
    client = VlmClient(provider_config(server, max_retries=1), cache=cache)

    with pytest.raises(VlmCallError) as caught:
        complete(client)

    assert API_KEY not in caught.value.message
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(client)
    cache.close()
    for path in tmp_path.rglob("*"):
        assert API_KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
        (None, None),
    ],
    ids=["seconds", "fraction", "milliseconds-first", "garbage", "absent", "no-headers"],
)
def test_parse_retry_after(headers: dict[str, str] | None, expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    moment = datetime.now(UTC) + timedelta(seconds=30)
    value = parse_retry_after({"retry-after": format_datetime(moment, usegmt=True)})
    assert value is not None
    assert 28 <= value <= 31


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_limiter_spaces_requests_evenly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=120, clock=clock, sleep=clock.sleep)

    async def five() -> list[float]:
        starts = []
        for _ in range(5):
            await limiter.acquire()
            starts.append(clock.now)
        return starts

    assert asyncio.run(five()) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_limiter_waits_for_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_minute=600, clock=clock, sleep=clock.sleep)

    async def run() -> None:
        await limiter.acquire(600)
        await limiter.acquire(60)

    asyncio.run(run())
    # The bucket refills at 10 tokens per second, so 60 tokens take 6 s.
    assert clock.now == pytest.approx(6.0)


def test_limiter_settles_underestimate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_minute=600, clock=clock, sleep=clock.sleep)

    async def run() -> None:
        await limiter.acquire(100)
        limiter.settle(100, 700)
        await limiter.acquire(10)

    asyncio.run(run())
    # 700 tokens used of 600: the bucket is at -100 and needs 110 tokens, 11 s.
    assert clock.now == pytest.approx(11.0)


def test_limiter_pause_holds_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    limiter.pause_for(3.0)
    asyncio.run(limiter.acquire())
    assert clock.now == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api_key": "sk-x"}, "'api_key' is not allowed"),
        ({"api_key_env": "sk-test-SECRET123"}, "NAME of an environment variable"),
        ({"extra_headers": {"Authorization": "Bearer x"}}, "may not contain 'Authorization'"),
        ({"extra_headers": {"X-Api-Key": "x"}}, "may not contain 'X-Api-Key'"),
        ({"backoff": {"base_s": 5, "max_s": 1}}, "set max_s >= base_s"),
        ({"max_concurrency": 0}, "greater than or equal to 1"),
        ({"modle": "typo"}, "Extra inputs are not permitted"),
    ],
    ids=[
        "inline-key",
        "key-as-env-name",
        "auth-header",
        "api-key-header",
        "backoff-order",
        "zero-concurrency",
        "unknown-field",
    ],
)
def test_provider_config_rejects(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        ProviderConfig(model="openai/gpt-4o", **settings)
    assert "sk-test-SECRET123" not in str(caught.value)
    assert "sk-x" not in str(caught.value)


def test_backoff_defaults_are_valid() -> None:
    backoff = BackoffConfig()
    assert backoff.max_s >= backoff.base_s
