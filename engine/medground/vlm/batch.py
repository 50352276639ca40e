"""Run one coroutine per item with bounded memory, stopping cleanly at the cost cap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from medground.vlm.client import CostCapReached

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


async def gather_until_cap(
    items: Sequence[ItemT],
    worker: Callable[[ItemT], Awaitable[ResultT]],
    limit: int,
) -> tuple[list[ResultT | None], CostCapReached | None]:
    """Run ``worker`` on every item, at most ``limit`` at a time.

    The limit bounds how many items are prepared at once (images decoded and encoded),
    not only how many requests are in flight, so a batch of thousands of images does
    not hold thousands of encoded images in memory.

    Returns:
        The results in item order, with None for items stopped by the cost cap, and the
        first :class:`CostCapReached` raised, or None.

    Raises:
        Exception: The first exception other than :class:`CostCapReached`; the other
            items are cancelled. Such an error, e.g. a broken template, would repeat for
            every item.
    """
    semaphore = asyncio.Semaphore(limit)
    results: list[ResultT | None] = [None] * len(items)
    stops: list[CostCapReached] = []

    async def run(index: int, item: ItemT) -> None:
        async with semaphore:
            if stops:
                return
            try:
                results[index] = await worker(item)
            except CostCapReached as exc:
                stops.append(exc)

    try:
        async with asyncio.TaskGroup() as group:
            for index, item in enumerate(items):
                group.create_task(run(index, item))
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return results, (stops[0] if stops else None)
