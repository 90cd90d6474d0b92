"""Rate limits of one model at one endpoint: requests and tokens per minute, shared by every
role of a run that calls it, as a provider counts them.

Built on aiolimiter's leaky buckets (maintained, asyncio-native, no thread). Requests leave
one at a time, evenly spaced at the configured rate (providers enforce a per-minute limit over
shorter periods too: a burst of a minute's requests in one second is refused), so any window of
T seconds holds at most 1 + rate x T of them; tokens use a bucket of one minute's worth, as
providers' token-per-minute windows allow. A request reserves its estimated input tokens
(characters / 4) before it is sent; its answer's output tokens, and any input the estimate
missed, are taken after, delaying that row's next call rather than letting the minute's total
pass the limit."""

from __future__ import annotations

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
