"""Waiting on a condition another task or process brings about: read until it holds, never a fixed sleep.

The reads come fast at first and slower as the wait drags on, so a quick outcome is seen at once and
a slow one costs few reads. The last value read is returned for the caller to assert on, so a
wait that runs out fails with what was seen rather than with a bare timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.5

T = TypeVar("T")


def wait_until(read: Callable[[], T], done: Callable[[T], bool], *, seconds: float) -> T:
    """Call `read()` until `done` holds for its value or `seconds` pass; the last value read."""
    deadline, pause = time.monotonic() + seconds, FIRST_PAUSE
    while not done(value := read()) and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(pause * 2, LONGEST_PAUSE)
    return value


async def await_until(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, seconds: float) -> T:
    """`wait_until` for an async `read`, pausing on the event loop so the awaited work goes on meanwhile."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + seconds, FIRST_PAUSE
    while not done(value := await read()) and (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, LONGEST_PAUSE)
    return value
