"""Async chat client for any litellm provider, safe for long paid runs.

:class:`VlmClient` wraps ``litellm.acompletion`` with what a run of tens of thousands of
images needs: bounded concurrency, request and token rate limits, retries with
exponential backoff that honour ``Retry-After`` on 429, a total timeout per request,
fail-fast on authentication errors, a cost cap that stops the run cleanly, token and
cost accounting per stage, and the reply cache of :mod:`medground.cache`.

A request that fails for good raises :class:`VlmCallError`, which callers record as a
rejection. Reaching the cost cap raises :class:`CostCapReached`, which the runner
catches. litellm is imported on first use, with ``LITELLM_LOCAL_MODEL_COST_MAP`` set so
that the import fetches no price map from the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any, Generic, TypeVar

from medground.cache import ResponseCache, cache_key
from medground.config.provider import ProviderConfig
from medground.vlm.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Loggers of litellm and its HTTP stack; at INFO they log every request.
_LIBRARY_LOGGERS = (
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "litellm",
    "httpx",
    "httpcore",
    "openai",
)

# NOTE: a rough estimate for the token limiter only. Providers bill images by size
# (OpenAI: 85 + 170 per 512-px tile at high detail, about 765 for a 1024-px image).
IMAGE_TOKENS_ESTIMATE = 1000
CHARS_PER_TOKEN_ESTIMATE = 4

# Rejection rule ids of call failures that a later run may succeed on. Failures are not
# cached, so a resumed run sends these requests again.
RETRYABLE_RULE_IDS = frozenset(
    {
        "vlm.rate_limited",
        "vlm.timeout",
        "vlm.connection_failed",
        "vlm.server_error",
        "vlm.auth_failed",
    }
)


class ProviderConfigError(ValueError):
    """A provider config that cannot work: a missing key variable, an unknown price."""


class VlmCallError(Exception):
    """A request that failed for good, after any retries; callers record a rejection.

    Attributes:
        rule_id: Rejection rule id, e.g. ``vlm.timeout`` or ``vlm.auth_failed``.
        message: What failed, with secrets removed.
        retryable: Whether a later run may succeed with the same request.
    """

    def __init__(self, rule_id: str, message: str) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.message = message
        self.retryable = rule_id in RETRYABLE_RULE_IDS


class CostCapReached(Exception):
    """The run has spent its cost cap; no further request is started.

    Requests already in flight when the cap is reached finish, and their cost counts,
    so spending can exceed the cap by at most ``max_concurrency`` replies. Replies that
    were validated are in the cache. Batch methods attach their finished results as
    ``completed`` before re-raising, so the runner can keep them.

    Attributes:
        spent_usd: Cost recorded in the ledger, including earlier runs on the same file.
        cap_usd: The configured ``cost_cap_usd``.
        completed: Results finished before the stop, set by the batch that raised.
        unfinished: Keys of the batch's items that were not finished.
    """

    def __init__(
        self,
        spent_usd: float,
        cap_usd: float,
        completed: Any = None,
        unfinished: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            f"cost cap reached: spent ${spent_usd:.4f} of cost_cap_usd ${cap_usd:.4f}; raise "
            "cost_cap_usd and run again to continue (cached replies are not paid twice)"
        )
        self.spent_usd = spent_usd
        self.cap_usd = cap_usd
        self.completed = completed
        self.unfinished = unfinished


class InvalidReply(Exception):
    """A reply that arrived but failed validation; it is not cached.

    Raised by the ``parse`` function given to :meth:`VlmClient.complete`. The client
    fills in ``content`` and ``cost_usd`` before re-raising, so the caller can quote the
    reply in a second request and account for what the failed reply cost.

    Attributes:
        rule_id: Rejection rule id, e.g. ``format.not_json``.
        message: What is wrong with the reply.
        partial: Whatever the parser could still use (e.g. the valid queries of a reply).
        content: The reply text.
        cost_usd: Cost of the call that produced the reply.
    """

    def __init__(self, rule_id: str, message: str, *, partial: Any = None) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.message = message
        self.partial = partial
        self.content: str | None = None
        self.cost_usd = 0.0


@dataclass(frozen=True)
class ChatReply(Generic[T]):
    """A validated reply.

    Attributes:
        content: The assistant message text.
        parsed: What the ``parse`` function returned for it.
        model: litellm model name of the config.
        prompt_tokens: Input tokens reported by the provider.
        completion_tokens: Output tokens reported by the provider.
        cost_usd: Cost of the call; for a cached reply, the cost of the original call.
        cached: Whether the reply came from the cache (no HTTP request).
        cache_key: The key the reply is cached under.
    """

    content: str
    parsed: T
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool
    cache_key: str


@dataclass
class StageUsage:
    """Counters of one stage for the run report (this process only)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    invalid_replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown_replies: int = 0


@dataclass(frozen=True)
class _RawReply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    semaphore: asyncio.Semaphore
    cap_logged: bool = field(default=False)


def quiet_library_loggers(level: int = logging.WARNING) -> None:
    """Raise the level of litellm's, httpx's and openai's loggers to ``level``."""
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def import_litellm() -> ModuleType:
    """Import litellm without network access at import time and with quiet logging."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # Before the import too, because litellm logs while it sets up its HTTP transport.
    quiet_library_loggers()
    import litellm

    # Without suppress_debug_info, litellm prints a feedback banner on every exception.
    litellm.suppress_debug_info = True
    quiet_library_loggers()
    return litellm


def parse_retry_after(headers: Any) -> float | None:
    """Read ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date) from headers."""
    if headers is None:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000.0)
        value = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _response_headers(exc: BaseException) -> Any:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is not None:
        return headers
    try:
        response = getattr(exc, "response", None)
    except Exception:  # some exception classes raise from this property
        return None
    return getattr(response, "headers", None)


class VlmClient:
    """Sends chat requests to one litellm model with limits, retries, cache and a cost cap.

    Args:
        config: The provider settings.
        cache: Reply cache and call ledger; None disables caching, and the cost cap then
            counts only this client's calls.
        limiter: Rate limiter; by default one built from the config's limits.

    Raises:
        ProviderConfigError: The key variable named by ``api_key_env`` is not set, or the
            model has no price in litellm's cost map and none in the config.

    One client serves one event loop at a time. Batch methods of different stages can
    share a client so that they share its limits and cost cap.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        cache: ResponseCache | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self._litellm = import_litellm()
        self._api_key = self._read_api_key(config)
        self._check_price_known()
        self._limiter = limiter or RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self._params: dict[str, Any] = {
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "json_response": config.json_response,
            "extra_headers": dict(sorted(config.extra_headers.items())),
        }
        self._usage: dict[str, StageUsage] = {}
        self._spent_without_cache = 0.0
        self._auth_failure: VlmCallError | None = None
        self._loop_state: _LoopState | None = None

    def __repr__(self) -> str:
        return f"VlmClient(model={self.config.model!r}, api_base={self.config.api_base!r})"

    # -- set-up ---------------------------------------------------------------------

    @staticmethod
    def _read_api_key(config: ProviderConfig) -> str | None:
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ProviderConfigError(
                    f"environment variable {config.api_key_env} is not set or empty; export "
                    f"it with the API key for {config.model} (provider.api_key_env names it)"
                )
            return key
        if (
            config.provider_name == "openai"
            and config.api_base is not None
            and not os.environ.get("OPENAI_API_KEY")
        ):
            raise ProviderConfigError(
                f"{config.model} at {config.api_base} needs an API key but api_key_env is "
                "not set and OPENAI_API_KEY is empty; for a server without authentication "
                "export a placeholder, e.g. LOCAL_VLM_KEY=unused, and set "
                "api_key_env: LOCAL_VLM_KEY"
            )
        return None

    def _check_price_known(self) -> None:
        if self.config.price is not None:
            return
        try:
            self._litellm.cost_per_token(
                model=self.config.model, prompt_tokens=1, completion_tokens=1
            )
        except Exception as exc:  # litellm raises several types for this
            raise ProviderConfigError(
                f"litellm has no price for model {self.config.model!r}, so costs and "
                "cost_cap_usd cannot be computed; set provider.price.input_per_1m_usd and "
                "provider.price.output_per_1m_usd (0 for a local server)"
            ) from exc

    def _state(self) -> _LoopState:
        # asyncio primitives bind to one loop; each asyncio.run batch gets new ones.
        loop = asyncio.get_running_loop()
        if self._loop_state is None or self._loop_state.loop is not loop:
            self._loop_state = _LoopState(
                loop=loop, semaphore=asyncio.Semaphore(self.config.max_concurrency)
            )
        return self._loop_state

    # -- accounting -----------------------------------------------------------------

    @property
    def model(self) -> str:
        """litellm model name of the config."""
        return self.config.model

    @property
    def spent_usd(self) -> float:
        """Cost that counts against the cap.

        With a cache, this is the run's whole ledger: all stages and earlier runs on the
        same file, so clients sharing one :class:`ResponseCache` share one budget.
        Without a cache, it is this client's own calls.
        """
        if self.cache is not None:
            return self.cache.spent_usd()
        return self._spent_without_cache

    def usage(self) -> dict[str, dict[str, Any]]:
        """Return the counters of this process per stage, as plain dicts."""
        return {stage: asdict(counters) for stage, counters in self._usage.items()}

    def _stage_usage(self, stage: str) -> StageUsage:
        return self._usage.setdefault(stage, StageUsage())

    def _reply_cost(
        self, response: Any, prompt_tokens: int, completion_tokens: int, usage: StageUsage
    ) -> float:
        price = self.config.price
        if price is not None:
            return (
                prompt_tokens * price.input_per_1m_usd + completion_tokens * price.output_per_1m_usd
            ) / 1_000_000
        try:
            return float(
                self._litellm.completion_cost(completion_response=response, model=self.model)
            )
        except Exception as exc:  # litellm raises several types here
            usage.cost_unknown_replies += 1
            logger.warning(
                "cost of a %s reply could not be computed and is counted as 0 (%d so far): %s",
                self.model,
                usage.cost_unknown_replies,
                self._redact(str(exc)),
            )
            return 0.0

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)

    def _estimate_tokens(self, messages: list[dict[str, Any]]) -> int:
        chars = 0
        images = 0
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        images += 1
                    else:
                        chars += len(str(part.get("text", "")))
        return (
            chars // CHARS_PER_TOKEN_ESTIMATE
            + images * IMAGE_TOKENS_ESTIMATE
            + self.config.max_tokens
        )

    # -- requests -------------------------------------------------------------------

    async def complete(
        self,
        *,
        stage: str,
        request_key: str,
        messages: list[dict[str, Any]],
        parse: Callable[[str], T],
    ) -> ChatReply[T]:
        """Return a validated reply to ``messages``, from the cache or from the provider.

        Args:
            stage: Stage name for accounting and the cache key, e.g. ``synthesis``.
            request_key: Id of what is asked about (image key, sample id), for logs.
            messages: OpenAI-format chat messages; images as base64 ``data:`` URLs.
            parse: Validates the reply text and returns the parsed value, or raises
                :class:`InvalidReply`. Only replies it accepts are cached.

        Raises:
            VlmCallError: The request failed for good (after retries where allowed).
            InvalidReply: The reply failed ``parse``; ``content`` and ``cost_usd`` are set.
            CostCapReached: The cost cap was reached before this request could be sent.
        """
        key = cache_key(
            stage=stage,
            model=self.model,
            api_base=self.config.api_base,
            messages=messages,
            params=self._params,
        )
        usage = self._stage_usage(stage)

        cached = self._read_cache(key, stage, request_key, parse)
        if cached is not None:
            usage.cache_hits += 1
            return cached

        raw = await self._send(stage, request_key, messages)
        try:
            parsed = parse(raw.content)
        except InvalidReply as exc:
            usage.invalid_replies += 1
            exc.content = raw.content
            exc.cost_usd = raw.cost_usd
            raise

        # Commit before the caller records anything, so a resumed run finds the reply.
        if self.cache is not None:
            self.cache.put(
                key,
                stage=stage,
                model=self.model,
                content=raw.content,
                prompt_tokens=raw.prompt_tokens,
                completion_tokens=raw.completion_tokens,
                cost_usd=raw.cost_usd,
                request_key=request_key,
            )
        return ChatReply(
            content=raw.content,
            parsed=parsed,
            model=self.model,
            prompt_tokens=raw.prompt_tokens,
            completion_tokens=raw.completion_tokens,
            cost_usd=raw.cost_usd,
            cached=False,
            cache_key=key,
        )

    def _read_cache(
        self, key: str, stage: str, request_key: str, parse: Callable[[str], T]
    ) -> ChatReply[T] | None:
        if self.cache is None:
            return None
        hit = self.cache.get(key)
        if hit is None:
            return None
        try:
            parsed = parse(hit.content)
        except InvalidReply as exc:
            logger.warning(
                "cached %s reply for %s no longer validates (%s: %s); asking the model again",
                stage,
                request_key,
                exc.rule_id,
                exc.message,
            )
            self.cache.delete(key)
            return None
        logger.debug("cache hit for %s reply of %s", stage, request_key)
        return ChatReply(
            content=hit.content,
            parsed=parsed,
            model=hit.model,
            prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens,
            cost_usd=hit.cost_usd,
            cached=True,
            cache_key=key,
        )

    def _check_can_send(self, stage: str, request_key: str) -> None:
        if self._auth_failure is not None:
            raise VlmCallError(
                "vlm.auth_failed",
                f"not sent: an earlier request to {self.model} failed authentication "
                f"({self._auth_failure.message})",
            )
        cap = self.config.cost_cap_usd
        if cap is not None and self.spent_usd >= cap:
            state = self._state()
            if not state.cap_logged:
                state.cap_logged = True
                logger.warning(
                    "cost cap reached at %s request for %s: spent $%.4f of $%.4f; "
                    "no further requests are sent",
                    stage,
                    request_key,
                    self.spent_usd,
                    cap,
                )
            raise CostCapReached(self.spent_usd, cap)

    async def _send(
        self, stage: str, request_key: str, messages: list[dict[str, Any]]
    ) -> _RawReply:
        usage = self._stage_usage(stage)
        estimated_tokens = self._estimate_tokens(messages)
        max_tries = self.config.max_retries + 1

        async with self._state().semaphore:
            attempt = 0
            while True:
                self._check_can_send(stage, request_key)
                await self._limiter.acquire(estimated_tokens)
                # The cap or an auth failure may have come up while this request waited.
                self._check_can_send(stage, request_key)

                usage.requests += 1
                started = time.monotonic()
                try:
                    response = await asyncio.wait_for(
                        self._acompletion(messages), timeout=self.config.timeout_s
                    )
                except Exception as exc:  # classified below, unknown re-raised
                    failure = self._classify(exc)
                    if failure is None:
                        raise
                    self._record_call(
                        stage, request_key, failure.rule_id, latency_s=time.monotonic() - started
                    )
                    wait_s = self._retry_wait(exc, failure, attempt, max_tries, usage)
                    usage.retries += 1
                    logger.info(
                        "retrying %s request for %s in %.2f s (try %d of %d): %s",
                        stage,
                        request_key,
                        wait_s,
                        attempt + 2,
                        max_tries,
                        failure.message,
                    )
                    await asyncio.sleep(wait_s)
                    attempt += 1
                    continue

                return self._accept_response(
                    stage,
                    request_key,
                    response,
                    estimated_tokens,
                    latency_s=time.monotonic() - started,
                )

    def _retry_wait(
        self,
        exc: BaseException,
        failure: VlmCallError,
        attempt: int,
        max_tries: int,
        usage: StageUsage,
    ) -> float:
        """Return how long to wait before the next try, or raise the failure for good."""
        if failure.rule_id == "vlm.auth_failed":
            self._auth_failure = failure
            logger.error(
                "authentication with %s failed; sending no further requests: %s",
                self.model,
                failure.message,
            )
            usage.failures += 1
            raise failure
        if not failure.retryable or attempt + 1 >= max_tries:
            usage.failures += 1
            tries = f" after {attempt + 1} tries" if attempt else ""
            raise VlmCallError(failure.rule_id, f"{failure.message}{tries}")

        backoff = self.config.backoff
        if failure.rule_id == "vlm.rate_limited":
            retry_after = parse_retry_after(_response_headers(exc))
            if retry_after is not None:
                if retry_after > backoff.max_retry_after_s:
                    usage.failures += 1
                    raise VlmCallError(
                        failure.rule_id,
                        f"{failure.message}; the provider asked to retry after "
                        f"{retry_after:.0f} s, more than backoff.max_retry_after_s "
                        f"({backoff.max_retry_after_s:.0f} s)",
                    )
                self._limiter.pause_for(retry_after)
                return retry_after
        delay = min(backoff.max_s, backoff.base_s * 2**attempt)
        return delay * random.uniform(0.5, 1.0)

    async def _acompletion(self, messages: list[dict[str, Any]]) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "timeout": self.config.timeout_s,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            # Retries happen here, with the cap and the limiter in the loop, not inside
            # litellm or the OpenAI SDK (which retries twice by default).
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.config.api_base is not None:
            kwargs["api_base"] = self.config.api_base
        if self._api_key is not None:
            kwargs["api_key"] = self._api_key
        if self.config.extra_headers:
            kwargs["extra_headers"] = dict(self.config.extra_headers)
        if self.config.json_response:
            kwargs["response_format"] = {"type": "json_object"}
            # Providers without a JSON mode get the request without it; replies are
            # validated against the schema either way.
            kwargs["drop_params"] = True
        return await self._litellm.acompletion(**kwargs)

    def _classify(self, exc: BaseException) -> VlmCallError | None:
        """Map an exception of a request to a rejection rule id, or None if unknown."""
        llm = self._litellm
        detail = self._redact(f"{type(exc).__name__}: {exc}")[:500]
        checks: list[tuple[tuple[type[BaseException], ...], str]] = [
            ((llm.AuthenticationError, llm.PermissionDeniedError), "vlm.auth_failed"),
            ((llm.RateLimitError,), "vlm.rate_limited"),
            ((llm.Timeout, TimeoutError), "vlm.timeout"),
            ((llm.APIConnectionError,), "vlm.connection_failed"),
            (
                (llm.InternalServerError, llm.ServiceUnavailableError, llm.BadGatewayError),
                "vlm.server_error",
            ),
            ((llm.ContextWindowExceededError,), "vlm.context_window_exceeded"),
            ((llm.ContentPolicyViolationError,), "vlm.content_policy"),
            (
                (llm.BadRequestError, llm.UnprocessableEntityError, llm.NotFoundError),
                "vlm.bad_request",
            ),
        ]
        for types, rule_id in checks:
            if isinstance(exc, types):
                if rule_id == "vlm.timeout" and isinstance(exc, TimeoutError):
                    detail = f"timed out after {self.config.timeout_s:g} s (provider.timeout_s)"
                return VlmCallError(rule_id, f"{self.model}: {detail}")

        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and status >= 500:
            return VlmCallError("vlm.server_error", f"{self.model}: {detail}")
        import openai  # litellm depends on it; its errors are the base of litellm's

        if isinstance(exc, openai.OpenAIError):
            return VlmCallError("vlm.call_failed", f"{self.model}: {detail}")
        return None

    def _accept_response(
        self,
        stage: str,
        request_key: str,
        response: Any,
        estimated_tokens: int,
        *,
        latency_s: float,
    ) -> _RawReply:
        usage = self._stage_usage(stage)
        reported = getattr(response, "usage", None)
        prompt_tokens = int(getattr(reported, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(reported, "completion_tokens", 0) or 0)
        self._limiter.settle(estimated_tokens, prompt_tokens + completion_tokens)

        cost = self._reply_cost(response, prompt_tokens, completion_tokens, usage)
        if self.cache is None:
            self._spent_without_cache += cost
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        usage.cost_usd += cost
        self._record_call(
            stage,
            request_key,
            "ok",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_s=latency_s,
        )

        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        return _RawReply(
            content=content or "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
        )

    def _record_call(
        self,
        stage: str,
        request_key: str,
        outcome: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        latency_s: float = 0.0,
    ) -> None:
        if self.cache is None:
            return
        self.cache.record_call(
            stage=stage,
            model=self.model,
            outcome=outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            latency_s=latency_s,
            request_key=request_key,
        )
