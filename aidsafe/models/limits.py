"""Rate limits of one model at one endpoint (requests and tokens per minute, shared by every
role of a run that calls it, as a provider counts them), and the adaptive concurrency of an
endpoint (AIMD, at the end).

Built on aiolimiter's leaky buckets (maintained, asyncio-native, no thread). Requests leave
one at a time, evenly spaced at the configured rate (providers enforce a per-minute limit over
shorter periods too: a burst of a minute's requests in one second is refused), so any window of
T seconds holds at most 1 + rate x T of them; tokens use a bucket of one minute's worth, as
providers' token-per-minute windows allow. A request reserves its estimated input tokens
(characters / 4) before it is sent; its answer's output tokens, and any input the estimate
missed, are taken after, delaying that row's next call rather than letting the minute's total
pass the limit."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from aiolimiter import AsyncLimiter


class RateLimits:
    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.requests: AsyncLimiter | None = None
        self.tokens: AsyncLimiter | None = None
        if requests_per_minute:
            self.requests = AsyncLimiter(1, 60 / requests_per_minute)
        if tokens_per_minute:
            self.tokens = AsyncLimiter(tokens_per_minute, 60)

    async def before(self, characters: int) -> int:
        """Wait for room for one request of `characters` of prompt; its token estimate."""
        if self.requests is not None:
            await self.requests.acquire()
        estimate = characters // 4
        if self.tokens is not None and estimate:
            await self.tokens.acquire(min(estimate, self.tokens.max_rate))
        return estimate

    async def after(self, estimate: int, usage: dict[str, Any]) -> None:
        """Account for what the answer used beyond the estimate."""
        if self.tokens is None:
            return
        used = int(usage.get("output_tokens", 0))
        used += max(0, int(usage.get("input_tokens", 0)) - estimate)
        if used:
            await self.tokens.acquire(min(used, self.tokens.max_rate))


class AdaptiveConcurrency:
    """How many requests an endpoint gets at once, found by AIMD (as TCP finds a link's
    capacity): unbounded until the endpoint first signals overload (HTTP 429, 503, 529 or a
    timeout), then half the requests in flight at that moment; each healthy answer adds
    1/limit (about one request per round trip) and each overload halves it, at most once per
    round trip (the answers of one burst count once). `Retry-After` is honoured by the retry
    that follows, as for any transient error."""

    def __init__(self) -> None:
        self.limit: float | None = None  # None: no overload seen yet
        self.in_flight = 0
        self.overloads = 0
        self._last_cut = float("-inf")
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _room(self) -> bool:
        return self.limit is None or self.in_flight < max(1, int(self.limit))

    async def acquire(self) -> None:
        while not self._room():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        self.in_flight += 1

    def release(self, overloaded: bool | None, took: float) -> None:
        """One request ended: `overloaded` True (the endpoint is over capacity), False (a
        healthy answer) or None (neither: another error, a cancellation); `took` seconds."""
        self.in_flight -= 1
        now = time.monotonic()
        if overloaded:
            self.overloads += 1
            if now - self._last_cut >= took:  # one cut per round trip
                start = self.in_flight + 1 if self.limit is None else self.limit
                self.limit = max(1.0, start / 2)
                self._last_cut = now
        elif overloaded is False and self.limit is not None:
            self.limit += 1 / self.limit
        while self._waiters and self._room():
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break  # it takes the room; the next release wakes the next

    def describe(self) -> str:
        limit = "open" if self.limit is None else f"{self.limit:.0f}"
        return f"{self.in_flight}/{limit}"
