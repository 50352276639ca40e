"""Requests-per-minute and tokens-per-minute limits for VLM calls in one event loop.

Requests are spaced evenly: with a limit of R requests per minute, two request starts
are at least ``60 / R`` seconds apart, so a run never bursts past the provider's quota
at its start. Tokens use a bucket with a capacity of one minute of tokens and refills
continuously. Token counts are estimates taken before a request is sent (input plus the
maximum output), corrected with the reported usage afterwards, because providers such
as OpenAI count ``max_tokens`` against the quota when a request arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """Waits before each request until the request and token limits allow it.

    Args:
        requests_per_minute: Maximum request starts per minute, or None for no limit.
        tokens_per_minute: Maximum tokens per minute, or None for no limit.
        clock: Monotonic clock in seconds (replaceable in tests).
        sleep: Coroutine that waits a number of seconds (replaceable in tests).

    The limiter keeps its timing state across event loops, so one instance can serve
    several ``asyncio.run`` batches in turn, but not two loops at the same time.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: int | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._interval_s = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._tokens_per_s = tokens_per_minute / 60.0 if tokens_per_minute else 0.0
        self._token_capacity = float(tokens_per_minute or 0)
        self._tokens = self._token_capacity
        self._clock = clock
        self._sleep = sleep
        self._next_start = 0.0
        self._paused_until = 0.0
        self._refilled_at = clock()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _loop_lock(self) -> asyncio.Lock:
        # An asyncio.Lock binds to the loop that first waits on it; a new batch under a
        # new asyncio.run gets a new lock.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    def _refill(self, now: float) -> None:
        if self._tokens_per_s:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(self._token_capacity, self._tokens + elapsed * self._tokens_per_s)
        self._refilled_at = now

    async def acquire(self, estimated_tokens: int = 0) -> None:
        """Wait until one more request with ``estimated_tokens`` tokens is allowed.

        Callers are served in the order they arrive. A request larger than the whole
        token budget waits for a full bucket instead of waiting forever.
        """
        async with self._loop_lock():
            needed = min(float(estimated_tokens), self._token_capacity)
            while True:
                now = self._clock()
                self._refill(now)
                wait_s = max(0.0, self._paused_until - now, self._next_start - now)
                if self._tokens_per_s and self._tokens < needed:
                    wait_s = max(wait_s, (needed - self._tokens) / self._tokens_per_s)
                if wait_s <= 0:
                    break
                await self._sleep(wait_s)

            if self._interval_s:
                self._next_start = max(now, self._next_start) + self._interval_s
            if self._tokens_per_s:
                self._tokens -= needed

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token bucket once a reply reports the tokens really used.

        The bucket may go below zero after an underestimate, which delays later requests
        until the excess has refilled.
        """
        if not self._tokens_per_s:
            return
        estimate = min(float(estimated_tokens), self._token_capacity)
        self._tokens -= actual_tokens - estimate

    def pause_for(self, seconds: float) -> None:
        """Hold every request start for ``seconds`` from now (after a 429 with Retry-After)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            logger.debug("rate limiter paused for %.2f s", seconds)
