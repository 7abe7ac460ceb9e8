"""What a failing key holds: its failure, not the requests that were answered with it.

The soak found the daemon's memory growing while AWS failed (tests/soak.py, docs/benchmarks.md,
"Soak"): each request for a key with nothing to serve stale was answered by raising the failure
the key's entry stored, and raising one exception object again chains the raising frames onto its
traceback, so every such request's frames (its request, its connection's handler and buffers)
stayed alive for as long as the entry kept that failure. A failure's own traceback and context
kept the AWS call's frames (botocore's response, aiohttp's) alive too, per failed entry.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from sidecar.daemon.cache.cache import Cache
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import UpstreamError
from tests.support import FakeClock


class Held:
    """Stands for what a frame holds: an aiohttp request, botocore's response."""


async def no_batch(keys: list[str]) -> dict[str, str | None]:
    raise AssertionError("these tests refresh nothing")


def make_cache(fetch, clock: FakeClock, *, batch=no_batch, max_stale: float = 3600) -> Cache:  # type: ignore[no-untyped-def]
    return Cache(
        fetch,
        batch,
        ttl=300,
        negative_ttl=60,
        max_stale=max_stale,
        max_entries=100,
        metrics=Metrics(),
        timer=clock,
        jitter=lambda low, high: 0.8,
    )


async def failing_fetch(key: str) -> str | None:
    """As sources.aws.Caller fails: a response in the failing frame, the AWS error as context."""
    response = Held()
    try:
        raise RuntimeError(f"AWS answered 503 for {key}")
    except RuntimeError:
        error = UpstreamError("GetSecretValue", "ServiceUnavailable", transient=True)
        raise error from None
    finally:
        failing_fetch.responses.append(weakref.ref(response))  # type: ignore[attr-defined]


async def ask(cache: Cache, key: str) -> weakref.ref[Held]:
    """A request for `key` answered with the failure, as the HTTP handler answers a 503."""
    request = Held()
    with pytest.raises(UpstreamError):
        await cache.get(key)
    return weakref.ref(request)


async def settled() -> None:
    """One turn of the loop (the fetches' done callbacks let go of them), then a full collection."""
    await asyncio.sleep(0)
    gc.collect()


@pytest.fixture(autouse=True)
def _responses():  # type: ignore[no-untyped-def]
    failing_fetch.responses = []  # type: ignore[attr-defined]


async def test_requests_answered_with_a_stored_failure_are_not_kept() -> None:
    clock = FakeClock()
    cache = make_cache(failing_fetch, clock)

    requests = [await ask(cache, "k") for _ in range(50)]  # the first fetches, the others back off
    await settled()

    assert sum(r() is not None for r in requests) == 0
    assert cache._backoff.failure("k") is not None  # the cache still holds its failure


async def test_a_stored_failure_keeps_nothing_of_the_failed_call() -> None:
    clock = FakeClock()
    cache = make_cache(failing_fetch, clock)
    for _ in range(3):
        await ask(cache, "k")
        clock.advance(60)  # past the back-off: the next request fetches again
    await settled()

    assert len(failing_fetch.responses) == 3  # type: ignore[attr-defined]
    assert [r() for r in failing_fetch.responses] == [None, None, None]  # type: ignore[attr-defined]


async def test_a_failed_batch_keeps_nothing_of_its_call_or_its_requests() -> None:
    """One batch failure is the failure of every key in it: requests for any of them add nothing."""
    clock = FakeClock()
    values = {f"k{i}": "v" for i in range(10)}

    async def fetch(key: str) -> str | None:
        return values[key]

    async def fetch_many(keys: list[str]) -> dict[str, str | None]:
        await failing_fetch(keys[0])
        raise AssertionError("failing_fetch raises")

    cache = make_cache(fetch, clock, batch=fetch_many, max_stale=0)  # nothing stale to serve: requests fail
    for key in values:
        await cache.get(key)
    await cache.revalidate(set(values), since=clock(), due_before=clock())  # all changed: the batch fails
    assert all(cache._backoff.failure(key) is not None for key in values)
    requests = [await ask(cache, key) for key in values for _ in range(5)]
    await settled()

    assert sum(r() is not None for r in requests) == 0
    assert [r() for r in failing_fetch.responses] == [None]  # type: ignore[attr-defined]


def test_the_connection_guard_forgets_closed_connections_soon():
    """SIDECAR_MAX_CONNECTIONS' guard remembers admitted connections; closed ones must not pile up
    until a thousand of them (each holds its aiohttp handler) before they are forgotten."""
    from sidecar.daemon.http.guards import WithRoom

    class Request:
        def __init__(self, protocol: object) -> None:
            self.protocol = protocol

    open_now: list[object] = []
    room = WithRoom(1024, lambda: open_now)
    for _ in range(500):  # one client at a time, each on a new connection, as the soak's clients reconnect
        connection = object()
        open_now[:] = [connection]
        assert room.check(Request(connection)) is None  # type: ignore[arg-type]
    assert len(room.admitted) <= 2
