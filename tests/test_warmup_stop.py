"""A stop that lands as the events' trust changes still ends the listing loop.

On Python 3.10, `asyncio.wait_for` returns the inner result instead of raising when the task is
cancelled just after the inner awaitable finished, and the cancellation is lost. The listing loop
waited with it on `trust_changed`, which the events consumer sets as it stops: a stop that came at
that moment left the loop waiting for its next listing, and `Daemon.stop` waiting on the loop
(found as a hang of `make test` on 3.10 under CI's load)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sidecar.daemon.catalog.warmup import WarmUp
from tests.support import make_settings


class Events:
    """The consumer as the listing loop sees it: whether it is trusted, and when that changes."""

    def __init__(self) -> None:
        self.trust_changed = asyncio.Event()

    def trusted(self) -> bool:
        return True


async def test_a_cancel_as_the_trust_changes_is_not_lost():
    events = Events()
    settings = make_settings("http://127.0.0.1:1", events_list_interval="3600")
    warmup = WarmUp(settings, None, None, None, jitter=lambda low, high: 1.0, events=events)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(warmup._until_next_listing())
    for _ in range(3):  # until it waits on trust_changed
        await asyncio.sleep(0)
    events.trust_changed.set()
    await asyncio.sleep(0)  # the wait on trust_changed has ended; the loop has not run again yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
