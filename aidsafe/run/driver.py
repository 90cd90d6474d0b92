"""The driver: streams items to N concurrent workers in one structured task group, counts them
for the progress line, and stops the whole run at the first error no row can absorb (a failed
ledger write, a bug outside any row), so a run ends or fails but never hangs."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


@dataclass
class Budget:
    """A cap on what a run directory may spend, in USD and/or tokens, with what its earlier runs
    spent. A row may start while the spending so far plus the projected cost of the rows in
    flight and of the new one stays within the cap; the projection is the mean finished row."""

    max_cost: float | None
    max_tokens: int | None
    cost: float = 0.0  # spent so far, earlier runs included
    tokens: int = 0
    rows: int = 0  # finished rows the spending came from
    reached: bool = False

    def add(self, cost: float, tokens: int) -> None:
        self.cost += cost
        self.tokens += tokens
        self.rows += 1

    def admits(self, in_flight: int) -> bool:
        """Whether one more row may start beside `in_flight` running ones (before any row has
        finished there is nothing to project from: rows start up to the concurrency)."""
        if self.reached:
            return False
        if self.rows:
            coming = in_flight + 1
            over_cost = self.max_cost is not None and (
                self.cost + coming * self.cost / self.rows > self.max_cost
            )
            over_tokens = self.max_tokens is not None and (
                self.tokens + coming * self.tokens / self.rows > self.max_tokens
            )
            self.reached = over_cost or over_tokens
        else:
            self.reached = (self.max_cost is not None and self.cost >= self.max_cost) or (
                self.max_tokens is not None and self.tokens >= self.max_tokens
            )
        return not self.reached


class Tally:
    """Counts items and tokens for the progress line and the summary."""

    def __init__(self, progress: Progress | None, description: str, total: int | None) -> None:
        self.progress = progress
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.tokens = 0
        self.cost = 0.0
        self.load: Callable[[], str] | None = None  # e.g. requests in flight per endpoint
        self.started = time.perf_counter()
        self.task = progress.add_task(description, total=total, status="") if progress else None

    def skip(self) -> None:
        self.skipped += 1
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def advance(self, ok: bool, tokens: int, cost: float = 0.0) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.tokens += tokens
        self.cost += cost
        if self.progress is not None and self.task is not None:
            rate = (self.done + self.failed) / max(time.perf_counter() - self.started, 1e-9)
            speed = f"{rate:.1f} rows/s" if rate >= 1 else f"{60 * rate:.1f} rows/min"
            status = f"ok {self.done}  failed {self.failed}  {speed}  tokens {self.tokens:,}"
            if self.cost:
                status += f"  ${self.cost:,.4f}"
            if self.load is not None and (load := self.load()):
                status += f"  in flight {load}"
            self.progress.update(self.task, advance=1, status=status)


def progress_display(console: Console, show: bool) -> Progress | None:
    if not show:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


async def drive(
    items: Iterable[T],
    concurrency: int,
    process: Callable[[T], Awaitable[tuple[bool, int, float]]],
    tally: Tally,
    budget: Budget | None = None,
) -> None:
    """Feed items to `concurrency` workers through a bounded queue, so input is streamed. An
    exception in a worker or in the input cancels every other task and is raised here (the
    first one, unwrapped from its exception group).

    While it runs, the objects made before it (modules, compiled graphs, clients) are frozen
    out of the garbage collector: a full collection otherwise scans them all, a pause of
    50-80 ms in which no row's answer is read (efficiency at 64 in flight x 200 ms went from
    0.82-0.86 to 0.92-0.93; benchmarks/RESULTS.md).

    With a `budget`, no item starts once it is reached (`budget.reached`); items in flight
    finish, and those not started stay to do."""
    gc.freeze()
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(maxsize=concurrency * 2)

    running = 0

    async def worker() -> None:
        nonlocal running
        while (item := await queue.get()) is not None:
            if budget is not None and not budget.admits(running):
                continue  # not started: the producer stops at its next item
            running += 1
            try:
                ok, tokens, cost = await process(item[0])
            finally:
                running -= 1
            tally.advance(ok, tokens, cost)
            if budget is not None:
                budget.add(cost, tokens)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
            for item in items:
                if budget is not None and budget.reached:
                    break
                await queue.put((item,))
            for _ in range(concurrency):
                await queue.put(None)
    except BaseExceptionGroup as errors:
        raise _first(errors) from None
    finally:
        gc.unfreeze()


def _first(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    first = errors.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
