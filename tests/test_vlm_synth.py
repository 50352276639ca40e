"""Tests of the VLM synthesiser through litellm against the loopback fake server."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fake_openai_server import (
    FakeOpenAIServer,
    auth_error,
    hang,
    rate_limited,
    server_error,
)
from medground.cache import ResponseCache
from medground.config.provider import PriceConfig, VlmSynthConfig
from medground.resources import resource_dir
from medground.synth.base import Synthesizer
from medground.synth.vlm import VlmSynthesizer
from medground.vlm.client import CostCapReached
from medground.vlm.prompting import PromptTemplateError
from vlm_helpers import (
    API_KEY,
    API_KEY_ENV,
    is_followup,
    make_request,
    provider_config,
    scan_for_secret,
    synthesis_responder,
)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(synthesis_responder, expected_api_key=API_KEY) as srv:
        yield srv


def synth_config(server: FakeOpenAIServer, **settings: Any) -> VlmSynthConfig:
    provider_settings = settings.pop("provider", {})
    return VlmSynthConfig(provider=provider_config(server, **provider_settings), **settings)


def decode_image(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_synthesizer_satisfies_protocol(server: FakeOpenAIServer) -> None:
    synthesizer: Synthesizer = VlmSynthesizer(synth_config(server))
    assert synthesizer.name == "vlm"


def test_valid_reply_becomes_candidate(server: FakeOpenAIServer, tmp_path: Path) -> None:
    synthesizer = VlmSynthesizer(synth_config(server))
    request = make_request(tmp_path)

    candidates, rejections = synthesizer.synthesize([request])

    assert rejections == []
    assert len(candidates) == 1
    candidate = candidates[0]
    assert candidate.image_key == request.image_key
    assert candidate.object_ids == ("o1",)
    assert candidate.target_id == "t1"
    assert candidate.task == "single"
    assert candidate.synthesizer == "vlm"
    assert candidate.model == "openai/fake-vlm"
    assert candidate.cost_usd == pytest.approx(140e-6)
    template_bytes = (resource_dir("prompts") / "vlm_synthesis.j2").read_bytes()
    assert candidate.prompt_sha256 == hashlib.sha256(template_bytes).hexdigest()


def test_prompt_shows_dataset_and_objects(server: FakeOpenAIServer, tmp_path: Path) -> None:
    VlmSynthesizer(synth_config(server, queries_per_image=2)).synthesize([make_request(tmp_path)])
    text = server.requests[0].prompt_text()
    assert "Modality: endoscopy" in text
    assert "Anatomy: colon" in text
    assert '"object_id": "o2"' in text
    assert '"size": "small"' in text
    assert "Write 2 referring queries" in text
    assert "the patient's sides are unknown" in text


def test_image_resized_but_boxes_in_original_pixels(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    request = make_request(tmp_path, width=400, height=200)
    VlmSynthesizer(synth_config(server, provider={"max_image_side_px": 100})).synthesize([request])

    urls = server.requests[0].image_urls()
    assert len(urls) == 1
    assert decode_image(urls[0]).size == (100, 50)
    text = server.requests[0].prompt_text()
    assert "400 x 200 pixels" in text
    assert '"bbox_xyxy": [4, 8, 34, 40]' in text


def test_set_of_marks_attaches_marked_copy(server: FakeOpenAIServer, tmp_path: Path) -> None:
    VlmSynthesizer(synth_config(server, set_of_marks=True)).synthesize([make_request(tmp_path)])

    urls = server.requests[0].image_urls()
    assert len(urls) == 2
    plain = np.asarray(decode_image(urls[0]).convert("RGB"))
    marked = np.asarray(decode_image(urls[1]).convert("RGB"))
    assert plain.shape == marked.shape
    assert (plain != marked).any()
    assert '"mark": 1' in server.requests[0].prompt_text()


@pytest.mark.parametrize(
    ("marker", "rule_id"),
    [
        ("fault:unknown_ids", "format.unknown_object_id"),
        ("fault:refusal", "format.not_json"),
        ("fault:malformed", "format.not_json"),
    ],
    ids=["unknown-ids", "plain-text-refusal", "truncated-json"],
)
def test_invalid_reply_is_format_rejection(
    server: FakeOpenAIServer, tmp_path: Path, marker: str, rule_id: str
) -> None:
    synthesizer = VlmSynthesizer(synth_config(server, retry_on_invalid=False))
    request = make_request(tmp_path, marker=marker)

    candidates, rejections = synthesizer.synthesize([request])

    assert candidates == []
    assert len(rejections) == 1
    assert rejections[0].stage == "format"
    assert rejections[0].rule_id == rule_id
    assert rejections[0].image_key == request.image_key
    assert server.request_count == 1


def test_invalid_reply_retried_with_error(server: FakeOpenAIServer, tmp_path: Path) -> None:
    synthesizer = VlmSynthesizer(synth_config(server, retry_on_invalid=True))
    request = make_request(tmp_path, marker="fault:unknown_ids_once")

    candidates, rejections = synthesizer.synthesize([request])

    assert rejections == []
    assert [c.object_ids for c in candidates] == [("o1",)]
    assert candidates[0].extra["retried_invalid"] is True
    assert server.request_count == 2
    followup = server.requests[1]
    assert is_followup(followup)
    assert "format.unknown_object_id" in followup.prompt_text()
    assert "['o99']" in followup.prompt_text()
    # The retry pays for both calls, and the candidate carries both costs.
    assert candidates[0].cost_usd == pytest.approx(2 * 140e-6)


def test_invalid_twice_is_rejected_once(server: FakeOpenAIServer, tmp_path: Path) -> None:
    synthesizer = VlmSynthesizer(synth_config(server, retry_on_invalid=True))
    candidates, rejections = synthesizer.synthesize(
        [make_request(tmp_path, marker="fault:refusal")]
    )

    assert candidates == []
    assert [r.rule_id for r in rejections] == ["format.not_json"]
    assert "after one retry" in rejections[0].message
    assert server.request_count == 2


def test_valid_queries_of_mixed_reply_kept(server: FakeOpenAIServer, tmp_path: Path) -> None:
    synthesizer = VlmSynthesizer(synth_config(server, retry_on_invalid=False, queries_per_image=2))
    request = make_request(tmp_path, marker="fault:one_bad_of_two")

    candidates, rejections = synthesizer.synthesize([request])

    assert [c.object_ids for c in candidates] == [("o1",)]
    assert len(rejections) == 1
    assert rejections[0].key == f"{request.image_key}/q1"
    assert rejections[0].rule_id == "format.unknown_object_id"


@pytest.mark.parametrize(
    ("faults", "retried", "rule_id"),
    [
        ([rate_limited(retry_after=0.2)], True, None),
        ([server_error(500)], True, None),
        ([hang(2)], True, None),
        ([server_error(500)] * 3, False, "vlm.server_error"),
        ([hang(2)] * 3, False, "vlm.timeout"),
        ([auth_error()], False, "vlm.auth_failed"),
    ],
    ids=["429-then-ok", "500-then-ok", "timeout-then-ok", "500-always", "timeout-always", "401"],
)
def test_transport_fault_retried_or_rejected(
    server: FakeOpenAIServer, tmp_path: Path, faults: list[Any], retried: bool, rule_id: str | None
) -> None:
    server.script(*faults)
    synthesizer = VlmSynthesizer(
        synth_config(server, provider={"timeout_s": 0.4, "max_retries": 2, "max_concurrency": 1})
    )
    request = make_request(tmp_path)

    candidates, rejections = synthesizer.synthesize([request])

    if retried:
        assert len(candidates) == 1
        assert rejections == []
    else:
        assert candidates == []
        assert [r.rule_id for r in rejections] == [rule_id]
        assert rejections[0].stage == "synthesis"
        assert rejections[0].message


def test_every_request_ends_in_result(server: FakeOpenAIServer, tmp_path: Path) -> None:
    markers = [
        None,
        "fault:refusal",
        "fault:unknown_ids",
        "fault:malformed",
        "fault:unknown_ids_once",
        None,
    ]
    requests = [
        make_request(tmp_path, f"case{index}", marker=marker, seed=index)
        for index, marker in enumerate(markers)
    ]
    server.script(rate_limited(retry_after=0.1), server_error(502))
    synthesizer = VlmSynthesizer(synth_config(server))

    candidates, rejections = synthesizer.synthesize(requests)

    finished = {c.image_key for c in candidates} | {r.image_key for r in rejections}
    assert finished == {request.image_key for request in requests}
    assert {c.image_key for c in candidates} == {
        "demo-polyps/case0",
        "demo-polyps/case4",
        "demo-polyps/case5",
    }
    assert all(r.message for r in rejections)


def test_auth_error_stops_sending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "sk-test-WRONG")
    requests = [make_request(tmp_path, f"case{index}", seed=index) for index in range(5)]
    with FakeOpenAIServer(synthesis_responder, expected_api_key=API_KEY) as server:
        synthesizer = VlmSynthesizer(synth_config(server, provider={"max_concurrency": 1}))
        candidates, rejections = synthesizer.synthesize(requests)

    assert candidates == []
    assert [r.rule_id for r in rejections] == ["vlm.auth_failed"] * 5
    assert server.request_count == 1


def test_cost_cap_keeps_finished_results(server: FakeOpenAIServer, tmp_path: Path) -> None:
    # Each reply costs $1 (100 input tokens at $10,000/M): the cap of $2.50 lets three
    # requests start and stops the other three.
    provider = {
        "price": PriceConfig(input_per_1m_usd=10_000, output_per_1m_usd=0),
        "cost_cap_usd": 2.5,
        "max_concurrency": 1,
    }
    requests = [make_request(tmp_path, f"case{index}", seed=index) for index in range(6)]
    cache = ResponseCache(tmp_path / "run" / "run.sqlite")
    synthesizer = VlmSynthesizer(synth_config(server, provider=provider), cache=cache)

    with pytest.raises(CostCapReached) as caught:
        synthesizer.synthesize(requests)

    candidates, rejections = caught.value.completed
    assert len(candidates) == 3
    assert rejections == []
    assert len(caught.value.unfinished) == 3
    assert server.request_count == 3
    assert cache.count() == 3

    # A later run with a higher cap pays only for the three unfinished images.
    provider["cost_cap_usd"] = 10.0
    resumed = VlmSynthesizer(
        synth_config(server, provider=provider),
        cache=ResponseCache(tmp_path / "run" / "run.sqlite"),
    )
    candidates, rejections = resumed.synthesize(requests)
    assert len(candidates) == 6
    assert server.request_count == 6


def test_unreadable_image_is_rejected(server: FakeOpenAIServer, tmp_path: Path) -> None:
    request = make_request(tmp_path)
    request.image_path.write_bytes(b"not a png")

    candidates, rejections = VlmSynthesizer(synth_config(server)).synthesize([request])

    assert candidates == []
    assert [r.rule_id for r in rejections] == ["vlm.image_unreadable"]
    assert server.request_count == 0


def test_image_size_mismatch_is_rejected(server: FakeOpenAIServer, tmp_path: Path) -> None:
    request = make_request(tmp_path)
    Image.new("RGB", (50, 50)).save(request.image_path)

    _, rejections = VlmSynthesizer(synth_config(server)).synthesize([request])

    assert [r.rule_id for r in rejections] == ["vlm.image_size_mismatch"]
    assert "50x50" in rejections[0].message


def test_sixteen_bit_image_is_sent(server: FakeOpenAIServer, tmp_path: Path) -> None:
    request = make_request(tmp_path)
    ramp = np.tile(np.linspace(0, 4000, 96, dtype=np.uint16), (64, 1))
    Image.fromarray(ramp).save(request.image_path)

    # 128 px is above the image's 96 px, so no resampling blurs the extremes.
    config = synth_config(server, provider={"max_image_side_px": 128})
    candidates, _ = VlmSynthesizer(config).synthesize([request])

    assert len(candidates) == 1
    sent = np.asarray(decode_image(server.requests[0].image_urls()[0]).convert("L"))
    assert sent.min() == 0
    assert sent.max() == 255


def test_dataset_template_overrides_builtin(server: FakeOpenAIServer, tmp_path: Path) -> None:
    prompt_dir = tmp_path / "dataset_prompts"
    prompt_dir.mkdir()
    source = (
        "{% block user %}Custom prompt for {{ dataset.name }}.\n"
        "{% for obj in objects %}{{ obj | tojson }}\n{% endfor %}"
        "Reply with JSON.{% endblock %}"
    )
    (prompt_dir / "vlm_synthesis.j2").write_text(source)

    synthesizer = VlmSynthesizer(synth_config(server), prompt_dirs=[prompt_dir])
    candidates, _ = synthesizer.synthesize([make_request(tmp_path)])

    assert server.requests[0].prompt_text().startswith("Custom prompt for demo-polyps.")
    assert server.requests[0].body["messages"][0]["role"] == "user"
    assert candidates[0].prompt_sha256 == hashlib.sha256(source.encode()).hexdigest()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (None, "not found"),
        ("{% block user %}{{ dataset.name }{% endblock %}", "invalid Jinja syntax"),
        ("Just text, no blocks.", "has no 'user' block"),
    ],
    ids=["missing-file", "syntax-error", "no-user-block"],
)
def test_bad_template_fails_at_load(
    server: FakeOpenAIServer, tmp_path: Path, source: str | None, message: str
) -> None:
    if source is not None:
        (tmp_path / "broken.j2").write_text(source)
    config = synth_config(server, prompt_template="broken")
    with pytest.raises(PromptTemplateError, match=message):
        VlmSynthesizer(config, prompt_dirs=[tmp_path])


def test_undefined_variable_fails_render(server: FakeOpenAIServer, tmp_path: Path) -> None:
    (tmp_path / "strict.j2").write_text("{% block user %}{{ patient_age }}{% endblock %}")
    synthesizer = VlmSynthesizer(
        synth_config(server, prompt_template="strict"), prompt_dirs=[tmp_path]
    )
    with pytest.raises(PromptTemplateError, match="'patient_age' is undefined"):
        synthesizer.synthesize([make_request(tmp_path)])
    assert server.request_count == 0


def test_sandbox_blocks_unsafe_attributes(server: FakeOpenAIServer, tmp_path: Path) -> None:
    (tmp_path / "escape.j2").write_text(
        "{% block user %}{{ dataset.__class__.__mro__ }}{% endblock %}"
    )
    synthesizer = VlmSynthesizer(
        synth_config(server, prompt_template="escape"), prompt_dirs=[tmp_path]
    )
    with pytest.raises(PromptTemplateError):
        synthesizer.synthesize([make_request(tmp_path)])


def test_key_never_written_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    run_dir = tmp_path / "run"
    markers = [None, "fault:refusal", "fault:unknown_ids_once", None]
    requests = [
        make_request(tmp_path, f"case{index}", marker=marker, seed=index)
        for index, marker in enumerate(markers)
    ]
    with FakeOpenAIServer(synthesis_responder, expected_api_key=API_KEY) as server:
        server.script(rate_limited(retry_after=0.1), server_error(500), auth_error())
        synthesizer = VlmSynthesizer(
            synth_config(server, set_of_marks=True), cache=ResponseCache(run_dir / "run.sqlite")
        )
        candidates, rejections = synthesizer.synthesize(requests)
        assert all(request.had_credentials for request in server.requests)

    assert candidates or rejections
    assert synthesizer.client.cache is not None
    synthesizer.client.cache.close()
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    assert any(path.name == "run.sqlite" for path in files)
    assert scan_for_secret(run_dir) == []
    assert API_KEY not in caplog.text
    captured = capfd.readouterr()
    assert API_KEY not in captured.out
    assert API_KEY not in captured.err
    assert all(API_KEY not in r.message for r in rejections)
