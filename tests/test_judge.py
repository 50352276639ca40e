"""Tests of the visual judge through litellm against the loopback fake server."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fake_openai_server import (
    Behaviour,
    FakeOpenAIServer,
    RecordedRequest,
    auth_error,
    json_reply,
    rate_limited,
    text_reply,
)
from medground.cache import ResponseCache
from medground.config.provider import AcceptCriterion, JudgeConfig, PriceConfig
from medground.verify.judge import (
    JudgeSample,
    VisualJudge,
    check_accept,
    skipped_verdict,
)
from medground.vlm.client import CostCapReached
from vlm_helpers import API_KEY, API_KEY_ENV, DATASET, provider_config, scan_for_secret

GOOD = {"supported": True, "unique": True, "confidence": 0.9, "reason": "The box shows it."}


def judge_responder(request: RecordedRequest) -> Behaviour:
    """Reply to a judge prompt, choosing the answer from a marker in the query."""
    text = request.prompt_text()
    if "[unsupported]" in text:
        return json_reply({**GOOD, "supported": False, "reason": "No polyp in the box."})
    if "[ambiguous]" in text:
        return json_reply({**GOOD, "unique": False, "reason": "Two polyps match."})
    if "[unsure]" in text:
        return json_reply({**GOOD, "confidence": 0.4, "reason": "The image is blurred."})
    if "[garbage-once]" in text and "Your reply was rejected" not in text:
        return text_reply("Looks fine to me.")
    if "[garbage]" in text:
        return json_reply({"supported": "yes"})
    return json_reply(GOOD)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(judge_responder, expected_api_key=API_KEY) as srv:
        yield srv


def judge_config(server: FakeOpenAIServer, **settings: Any) -> JudgeConfig:
    provider_settings = settings.pop("provider", {})
    return JudgeConfig(provider=provider_config(server, **provider_settings), **settings)


def sample(
    tmp_path: Path, query: str = "the large polyp", sample_id: str = "s1", **changes: Any
) -> JudgeSample:
    image_path = tmp_path / "images" / f"{sample_id}.png"
    if not image_path.exists():
        # A flat grey image, so that drawn box colours are easy to find.
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), (128, 128, 128)).save(image_path)
    fields: dict[str, Any] = {
        "sample_id": sample_id,
        "image_path": image_path,
        "query": query,
        "target_boxes_xyxy": ((4, 8, 34, 40),),
        "other_boxes_xyxy": ((44, 8, 74, 40),),
        "image_key": "demo-polyps/case1",
        "dataset": DATASET,
    }
    fields.update(changes)
    return JudgeSample(**fields)


def sent_image(request: RecordedRequest) -> np.ndarray:
    url = request.image_urls()[0]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))))


def has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((pixels[..., :3] == rgb).all(axis=-1).any())


def test_skipped_verdict_helper() -> None:
    assert skipped_verdict() == {"verdict": "skipped", "reason": "no judge configured"}


def test_supported_unique_query_passes(server: FakeOpenAIServer, tmp_path: Path) -> None:
    judge = VisualJudge(judge_config(server))

    [outcome] = judge.judge([sample(tmp_path)])

    assert outcome.passed
    assert outcome.rejections == ()
    assert outcome.verdict["verdict"] == "pass"
    assert outcome.verdict["model"] == "openai/fake-vlm"
    assert outcome.verdict["confidence"] == 0.9
    assert outcome.verdict["reason"] == "The box shows it."
    assert outcome.cost_usd == pytest.approx(140e-6)


def test_prompt_names_query_and_colours(server: FakeOpenAIServer, tmp_path: Path) -> None:
    VisualJudge(judge_config(server)).judge([sample(tmp_path, 'the "large" polyp')])
    text = server.requests[0].prompt_text()
    assert 'Query: "the "large" polyp"' in text
    assert "drawn in green" in text
    assert "drawn in magenta" in text
    assert "endoscopy image of the colon" in text


@pytest.mark.parametrize(
    ("draw_others", "expect_magenta"),
    [(True, True), (False, False)],
    ids=["others-drawn", "others-hidden"],
)
def test_boxes_drawn_in_two_colours(
    server: FakeOpenAIServer, tmp_path: Path, draw_others: bool, expect_magenta: bool
) -> None:
    judge = VisualJudge(judge_config(server, draw_other_candidates=draw_others))
    judge.judge([sample(tmp_path)])

    pixels = sent_image(server.requests[0])
    assert has_colour(pixels, (0x00, 0xE0, 0x00))
    assert has_colour(pixels, (0xFF, 0x40, 0xFF)) is expect_magenta
    assert ("magenta" in server.requests[0].prompt_text()) is expect_magenta


@pytest.mark.parametrize(
    ("query", "rule_id"),
    [
        ("the polyp [unsupported]", "judge.unsupported"),
        ("the polyp [ambiguous]", "judge.not_unique"),
        ("the polyp [unsure]", "judge.low_confidence"),
    ],
    ids=["unsupported", "not-unique", "low-confidence"],
)
def test_failed_criterion_is_judge_rejection(
    server: FakeOpenAIServer, tmp_path: Path, query: str, rule_id: str
) -> None:
    [outcome] = VisualJudge(judge_config(server)).judge([sample(tmp_path, query)])

    assert outcome.verdict["verdict"] == "fail"
    assert outcome.verdict["fired"] == [rule_id]
    assert [r.rule_id for r in outcome.rejections] == [rule_id]
    rejection = outcome.rejections[0]
    assert rejection.stage == "judge"
    assert rejection.key == "s1"
    assert rejection.image_key == "demo-polyps/case1"


@pytest.mark.parametrize(
    ("accept", "reply", "fired"),
    [
        (AcceptCriterion(), GOOD, []),
        (AcceptCriterion(), {**GOOD, "supported": False}, ["judge.unsupported"]),
        (AcceptCriterion(supported=False), {**GOOD, "supported": False}, []),
        (AcceptCriterion(unique=False), {**GOOD, "unique": False}, []),
        (AcceptCriterion(min_confidence=0.95), GOOD, ["judge.low_confidence"]),
        (AcceptCriterion(min_confidence=0.9), GOOD, []),
        (
            AcceptCriterion(),
            {**GOOD, "supported": False, "unique": False, "confidence": 0.1},
            ["judge.unsupported", "judge.not_unique", "judge.low_confidence"],
        ),
    ],
    ids=[
        "all-good",
        "unsupported",
        "supported-not-required",
        "unique-not-required",
        "confidence-below",
        "confidence-at-threshold",
        "everything-fails",
    ],
)
def test_check_accept(accept: AcceptCriterion, reply: dict[str, Any], fired: list[str]) -> None:
    assert [rule_id for rule_id, _ in check_accept(reply, accept)] == fired


def test_invalid_reply_retried_then_passes(server: FakeOpenAIServer, tmp_path: Path) -> None:
    [outcome] = VisualJudge(judge_config(server)).judge(
        [sample(tmp_path, "the polyp [garbage-once]")]
    )
    assert outcome.passed
    assert server.request_count == 2


@pytest.mark.parametrize("retry", [True, False], ids=["with-retry", "without-retry"])
def test_invalid_reply_fails_sample(server: FakeOpenAIServer, tmp_path: Path, retry: bool) -> None:
    judge = VisualJudge(judge_config(server, retry_on_invalid=retry))
    [outcome] = judge.judge([sample(tmp_path, "the polyp [garbage]")])

    assert outcome.verdict["verdict"] == "fail"
    assert [r.rule_id for r in outcome.rejections] == ["judge.invalid_reply"]
    assert "format.schema" in outcome.rejections[0].message
    assert server.request_count == (2 if retry else 1)


def test_call_failure_fails_sample(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.script(auth_error())
    [outcome] = VisualJudge(judge_config(server)).judge([sample(tmp_path)])

    assert outcome.verdict["verdict"] == "fail"
    assert [r.rule_id for r in outcome.rejections] == ["vlm.auth_failed"]
    assert outcome.rejections[0].stage == "judge"


def test_missing_targets_fail_without_call(server: FakeOpenAIServer, tmp_path: Path) -> None:
    [outcome] = VisualJudge(judge_config(server)).judge([sample(tmp_path, target_boxes_xyxy=())])
    assert [r.rule_id for r in outcome.rejections] == ["judge.no_targets"]
    assert server.request_count == 0


def test_rate_limit_then_pass(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.script(rate_limited(retry_after=0.2))
    [outcome] = VisualJudge(judge_config(server)).judge([sample(tmp_path)])
    assert outcome.passed
    assert server.request_count == 2


def test_outcomes_keep_input_order(server: FakeOpenAIServer, tmp_path: Path) -> None:
    samples = [sample(tmp_path, f"query {index}", sample_id=f"s{index}") for index in range(6)]
    outcomes = VisualJudge(judge_config(server)).judge(samples)
    assert [o.sample_id for o in outcomes] == [s.sample_id for s in samples]


def test_cached_verdicts_send_nothing(server: FakeOpenAIServer, tmp_path: Path) -> None:
    samples = [sample(tmp_path, f"query {index}", sample_id=f"s{index}") for index in range(3)]
    db = tmp_path / "run" / "run.sqlite"
    VisualJudge(judge_config(server), cache=ResponseCache(db)).judge(samples)
    again = VisualJudge(judge_config(server), cache=ResponseCache(db)).judge(samples)

    assert server.request_count == 3
    assert all(outcome.verdict["cached"] for outcome in again)
    assert all(outcome.passed for outcome in again)


def test_cost_cap_keeps_finished_verdicts(server: FakeOpenAIServer, tmp_path: Path) -> None:
    provider = {
        "price": PriceConfig(input_per_1m_usd=10_000, output_per_1m_usd=0),
        "cost_cap_usd": 1.5,
        "max_concurrency": 1,
    }
    samples = [sample(tmp_path, f"query {index}", sample_id=f"s{index}") for index in range(4)]
    judge = VisualJudge(judge_config(server, provider=provider))

    with pytest.raises(CostCapReached) as caught:
        judge.judge(samples)

    assert [o.sample_id for o in caught.value.completed] == ["s0", "s1"]
    assert caught.value.unfinished == ("s2", "s3")
    assert server.request_count == 2


def test_key_never_written_or_logged(
    server: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run_dir = tmp_path / "run"
    cache = ResponseCache(run_dir / "run.sqlite")
    samples = [sample(tmp_path, "the polyp [garbage-once]"), sample(tmp_path, sample_id="s2")]
    VisualJudge(judge_config(server), cache=cache).judge(samples)
    cache.close()

    assert scan_for_secret(run_dir) == []
    assert API_KEY not in caplog.text
