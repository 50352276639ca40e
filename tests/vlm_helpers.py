"""Builders shared by the VLM tests: images, requests, provider configs, responders."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fake_openai_server import Behaviour, FakeOpenAIServer, RecordedRequest, json_reply, text_reply
from medground.config.provider import BackoffConfig, PriceConfig, ProviderConfig
from medground.synth.base import ClassInfo, DatasetInfo, SynthesisRequest

API_KEY_ENV = "MGR_TEST_VLM_KEY"
API_KEY = "sk-test-SECRET123"
MODEL = "openai/fake-vlm"

DATASET = DatasetInfo(
    name="demo-polyps",
    modality="endoscopy",
    anatomy="colon",
    classes=(ClassInfo(name="polyp", display="polyp", plural="polyps"),),
    orientation="unknown",
)

_OBJECT_ID = re.compile(r'"object_id": "([^"]+)"')


def write_png(path: Path, width: int = 96, height: int = 64, *, seed: int = 0) -> Path:
    """Write an RGB PNG with a deterministic pattern and return its path."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_request(
    tmp_path: Path,
    case: str = "case1",
    *,
    object_count: int = 2,
    marker: str | None = None,
    width: int = 96,
    height: int = 64,
    seed: int = 0,
) -> SynthesisRequest:
    """Build a request for a real PNG in ``tmp_path`` with ``object_count`` polyps.

    ``marker`` is put in the first object's cues, where the responder of
    :func:`synthesis_responder` finds it in the prompt.
    """
    image_path = write_png(tmp_path / "images" / f"{case}.png", width, height, seed=seed)
    objects = []
    for index in range(object_count):
        cues: dict[str, Any] = {"size": "small" if index else "large", "count_in_class": 2}
        if marker is not None and index == 0:
            cues["marker"] = marker
        x0 = 4 + index * 40
        objects.append(
            {
                "object_id": f"o{index + 1}",
                "class": "polyp",
                "bbox_xyxy": [x0, 8, x0 + 30, 40],
                "cues": cues,
            }
        )
    targets = [
        {
            "target_id": f"t{index + 1}",
            "task": "single",
            "class": "polyp",
            "object_ids": [f"o{index + 1}"],
            "cues": {},
        }
        for index in range(object_count)
    ]
    return SynthesisRequest(
        image_key=f"demo-polyps/{case}",
        image_path=image_path,
        image_sha256=hashlib.sha256(image_path.read_bytes()).hexdigest(),
        width=width,
        height=height,
        dataset=DATASET,
        objects=tuple(objects),
        targets=tuple(targets),
    )


def provider_config(server: FakeOpenAIServer, **overrides: Any) -> ProviderConfig:
    """Build a provider config for the fake server with short timeouts and backoffs."""
    settings: dict[str, Any] = {
        "model": MODEL,
        "api_base": server.base_url,
        "api_key_env": API_KEY_ENV,
        "timeout_s": 2.0,
        "max_retries": 2,
        "max_concurrency": 4,
        "backoff": BackoffConfig(base_s=0.01, max_s=0.05, max_retry_after_s=5),
        "price": PriceConfig(input_per_1m_usd=1.0, output_per_1m_usd=2.0),
        "max_image_side_px": 64,
    }
    settings.update(overrides)
    return ProviderConfig(**settings)


def object_ids_in(request: RecordedRequest) -> list[str]:
    """List the object ids that the synthesis prompt of a request shows."""
    return _OBJECT_ID.findall(request.prompt_text())


def is_followup(request: RecordedRequest) -> bool:
    """Whether a request quotes a rejected reply (the retry after an invalid reply)."""
    return "Your reply was rejected" in request.prompt_text()


def synthesis_responder(request: RecordedRequest) -> Behaviour:
    """Reply to a synthesis prompt, misbehaving where a marker in the prompt says so.

    Markers: ``fault:unknown_ids_once`` (invalid ids, then valid on the follow-up),
    ``fault:unknown_ids`` (invalid every time), ``fault:refusal`` (plain text),
    ``fault:malformed`` (truncated JSON), ``fault:one_bad_of_two`` (two queries, one
    with an unknown id). Otherwise one valid query for the first object.
    """
    text = request.prompt_text()
    ids = object_ids_in(request)
    good = {"query": f"the polyp marked {ids[0]}", "task": "single", "object_ids": [ids[0]]}
    bad = {"query": "the polyp on the far left", "task": "single", "object_ids": ["o99"]}
    if "fault:unknown_ids_once" in text and not is_followup(request):
        return json_reply({"queries": [bad]})
    if "fault:unknown_ids" in text and "fault:unknown_ids_once" not in text:
        return json_reply({"queries": [bad]})
    if "fault:refusal" in text:
        return text_reply("I'm sorry, but I can't help with describing medical images.")
    if "fault:malformed" in text:
        return text_reply('{"queries": [{"query": "the polyp", "task": ')
    if "fault:one_bad_of_two" in text:
        return json_reply({"queries": [good, bad]})
    return json_reply({"queries": [good]})


def scan_for_secret(folder: Path, secret: str = API_KEY) -> list[Path]:
    """Return every file under ``folder`` whose bytes contain ``secret``."""
    needle = secret.encode()
    return [path for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()]


def reply_json(payload: dict[str, Any]) -> str:
    """Serialise a reply payload as the fake server sends it."""
    return json.dumps(payload)
