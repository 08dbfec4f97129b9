"""Staying within a hosted API's rate limits: requests and tokens per minute, and Retry-After.

Hosted APIs limit requests per minute (RPM) and tokens per minute (TPM, counting a request's input
plus its `max_tokens`), and answer 429 with a `Retry-After` when a client goes over. An endpoint
may declare its limits (`requests_per_minute`, `tokens_per_minute`); each is a token bucket that
holds a minute's worth and refills continuously, so requests go out as fast as the limits allow
(and `max_concurrency` at most at once). A 429's Retry-After pauses every request to that endpoint,
not just the one that got it: the others would only meet the same answer.

The limiter is plain arithmetic on a clock; `acquire` sleeps in asyncio. Tests drive it with a
fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Bucket:
    """A token bucket holding up to `per_minute`, refilled at per_minute / 60 a second; None: no limit."""

    def __init__(self, per_minute: int | None, now: float):
        self.capacity = float(per_minute) if per_minute else None
        self.level, self.at = self.capacity or 0.0, now

    def refill(self, now: float) -> None:
        if self.capacity is not None:
            self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60)
        self.at = now

    def wait(self, n: float) -> float:
        """Seconds until `n` can be taken (a request larger than the bucket waits for a full one)."""
        if self.capacity is None:
            return 0.0
        n = min(n, self.capacity)
        return 0.0 if self.level >= n else (n - self.level) * 60 / self.capacity

    def take(self, n: float) -> None:
        if self.capacity is not None:
            self.level -= min(n, self.capacity)


class RateLimiter:
    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        now = clock()
        self.requests, self.tokens = Bucket(requests_per_minute, now), Bucket(tokens_per_minute, now)
        self.paused_until = 0.0

    def wait(self, tokens: int) -> float:
        """0 and the request's share taken, or the seconds to wait before asking again."""
        now = self.clock()
        for b in (self.requests, self.tokens):
            b.refill(now)
        delay = max(self.paused_until - now, self.requests.wait(1), self.tokens.wait(tokens))
        if delay <= 0:
            self.requests.take(1)
            self.tokens.take(tokens)
        return max(delay, 0.0)

    async def acquire(self, tokens: int, sleep: Callable = asyncio.sleep) -> None:
        """Wait until a request of `tokens` may go out. (No lock: nothing awaits between check and take.)"""
        while (delay := self.wait(tokens)) > 0:
            await sleep(delay)

    def pause(self, seconds: float) -> None:
        """A Retry-After: nothing goes out for `seconds`."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)
