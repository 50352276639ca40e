"""Settings for VLM calls: the provider, the synthesis stage and the visual judge.

These models are declarations only: they import nothing from the engine's stages, so a
manifest model can embed them under its ``synthesizer:`` and ``judge:`` keys. API keys
never appear here. A config names the environment variable that contains the key
(``api_key_env``), and the key is read from the environment when a client is built.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Substrings of header names that usually carry credentials. A header whose lower-case
# name contains one of them is rejected, because config files are written to run folders.
_SECRET_HEADER_PARTS = (
    "authorization",
    "api-key",
    "apikey",
    "api_key",
    "token",
    "secret",
    "cookie",
    "password",
)

# Keys someone may write in place of api_key_env, and would thereby put a secret in a file.
_KEY_FIELDS = ("api_key", "apikey", "key", "token", "secret")


class _Strict(BaseModel):
    # hide_input_in_errors keeps a mistyped secret out of validation messages and logs.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class BackoffConfig(_Strict):
    """Waits between retries of a failed request.

    Retry n (from 0) waits a random time between half and all of
    ``min(max_s, base_s * 2**n)`` seconds. A 429 reply with ``Retry-After`` waits the
    time the provider asked for instead, and every other request waits for that time too.
    """

    base_s: float = Field(default=1.0, gt=0, description="wait before the first retry, in seconds")
    max_s: float = Field(
        default=60.0, gt=0, description="maximum wait between two tries, in seconds"
    )
    max_retry_after_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "maximum Retry-After the client waits for, in seconds; a longer one fails the "
            "request with a rejection instead of stalling the run"
        ),
    )

    @model_validator(mode="after")
    def _max_not_below_base(self) -> BackoffConfig:
        if self.max_s < self.base_s:
            raise ValueError(
                f"backoff.max_s ({self.max_s}) is smaller than backoff.base_s ({self.base_s}); "
                "set max_s >= base_s"
            )
        return self


class PriceConfig(_Strict):
    """Token prices in US dollars per million tokens.

    When set, these prices are used instead of litellm's cost map. Set them for models
    that litellm does not know, and to 0 for a local server.
    """

    input_per_1m_usd: float = Field(ge=0)
    output_per_1m_usd: float = Field(ge=0)


class ProviderConfig(_Strict):
    """One VLM endpoint reached through litellm, and the limits of a run against it.

    ``model`` uses litellm's ``<provider>/<model>`` names, e.g. ``openai/gpt-4o``,
    ``anthropic/claude-sonnet-4-5``, ``gemini/gemini-2.5-flash`` or
    ``openai/<name>`` with ``api_base`` for an OpenAI-compatible server.
    """

    model: str = Field(min_length=1)
    api_base: str | None = Field(default=None, description="endpoint URL; None uses the provider's")
    api_key_env: str | None = Field(
        default=None,
        description=(
            "name of the environment variable holding the API key; None lets litellm read "
            "the provider's usual variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...)"
        ),
    )
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=1024, gt=0, description="maximum output tokens per reply")
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="time limit for one HTTP request, whole reply included, in s",
    )
    max_concurrency: int = Field(default=4, ge=1, description="requests in flight at once")
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(
        default=None, gt=0, description="input plus maximum output tokens per minute (estimated)"
    )
    max_retries: int = Field(
        default=5, ge=0, description="retries after the first try of a request"
    )
    # Sharing one default instance is safe because the models are frozen.
    backoff: BackoffConfig = BackoffConfig()
    cost_cap_usd: float | None = Field(
        default=None, ge=0, description="stop starting requests once the run has spent this much"
    )
    price: PriceConfig | None = None
    max_image_side_px: int = Field(
        default=1024, ge=32, description="longer image side sent to the model; boxes stay in pixels"
    )
    json_response: bool = Field(
        default=True, description="ask the provider for JSON output (response_format json_object)"
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="non-secret HTTP headers sent with every request"
    )

    @model_validator(mode="before")
    @classmethod
    def _reject_inline_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in _KEY_FIELDS:
                if name in data:
                    raise ValueError(
                        f"'{name}' is not allowed in a provider config because config files "
                        "are copied into run folders; put the key in an environment variable "
                        "and name that variable in 'api_key_env', e.g. "
                        "api_key_env: OPENAI_API_KEY"
                    )
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            # The value is not echoed: it may be the key itself pasted by mistake.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, "
                "underscores, e.g. OPENAI_API_KEY), not the key itself"
            )
        return value

    @field_validator("extra_headers")
    @classmethod
    def _no_secret_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            lowered = name.lower()
            if any(part in lowered for part in _SECRET_HEADER_PARTS):
                raise ValueError(
                    f"extra_headers may not contain '{name}': headers that carry credentials "
                    "would be written with the config; the API key comes from api_key_env"
                )
        return value

    @property
    def provider_name(self) -> str:
        """The litellm provider prefix of ``model``, e.g. ``openai``, or ``""`` without one."""
        prefix, sep, _ = self.model.partition("/")
        return prefix if sep else ""


def _check_template_name(value: str) -> str:
    if not _TEMPLATE_NAME.match(value):
        raise ValueError(
            f"invalid prompt template name {value!r}: use a file name from prompts/ such as "
            "'vlm_synthesis' or 'vlm_synthesis.j2', without folders"
        )
    return value


class AcceptCriterion(_Strict):
    """What a judge reply must state for a sample to pass.

    ``supported: true`` requires the judge to find the query supported by the image,
    ``unique: true`` requires the query to single out the boxed targets, and
    ``min_confidence`` is the lowest confidence that passes. ``false`` means the field is
    not checked.
    """

    supported: bool = True
    unique: bool = True
    min_confidence: float = Field(default=0.7, ge=0, le=1)


class JudgeSettings(_Strict):
    """The visual judge's settings other than the provider: accept rule, drawing, prompt.

    :class:`JudgeConfig` adds the provider. A manifest's ``judge:`` adds either the
    provider or the path of a file that holds it.
    """

    accept: AcceptCriterion = AcceptCriterion()
    draw_other_candidates: bool = Field(
        default=True, description="draw the image's other objects in a second colour"
    )
    prompt_template: str = Field(
        default="vlm_judge", description="template in prompts/ or in the manifest's folder"
    )
    retry_on_invalid: bool = Field(
        default=True, description="ask once more, with the validation error, after an invalid reply"
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_name(cls, value: str) -> str:
        return _check_template_name(value)


class JudgeConfig(JudgeSettings):
    """The visual judge: a VLM that receives the image with boxes drawn, and the query."""

    provider: ProviderConfig


class VlmSynthSettings(_Strict):
    """The VLM synthesiser's settings other than the provider: prompt, marks, query count.

    :class:`VlmSynthConfig` adds the provider. A manifest's ``synthesizer:`` with
    ``kind: vlm`` adds either the provider or the path of a file that contains it.
    """

    prompt_template: str = Field(
        default="vlm_synthesis",
        description="template in prompts/ or in the manifest's folder",
    )
    set_of_marks: bool = Field(
        default=False, description="also send a copy of the image with numbered boxes drawn"
    )
    retry_on_invalid: bool = Field(
        default=True, description="ask once more, with the validation error, after an invalid reply"
    )
    queries_per_image: int = Field(default=1, ge=1, le=20)

    @field_validator("prompt_template")
    @classmethod
    def _template_name(cls, value: str) -> str:
        return _check_template_name(value)


class VlmSynthConfig(VlmSynthSettings):
    """The VLM synthesiser: which model writes queries, from which prompt, how many."""

    kind: Literal["vlm"] = "vlm"
    provider: ProviderConfig
