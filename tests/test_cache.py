"""The cache engine alone: a fetch coroutine we control and a clock that only moves when told."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.daemon.cache.backoff import BACKOFF_FIRST, BACKOFF_MAX
from sidecar.daemon.cache.cache import REFRESH_MIN_INTERVAL, Cache
from sidecar.daemon.cache.entry import Status
from sidecar.daemon.cache.store import SWEEP_EVERY
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import UpstreamError
from tests.support import FakeClock

THROTTLED = UpstreamError("GetSecretValue", "ThrottlingException", transient=True)
DENIED = UpstreamError("GetSecretValue", "AccessDeniedException", transient=False)


class Store:
    """A fake upstream: a dict of answers, a call log, and failures on demand."""

    def __init__(self, **values: str) -> None:
        self.values: dict[str, str] = dict(values)
        self.calls: list[str] = []
        self.batches: list[list[str]] = []
        self.error: UpstreamError | None = None
        self.gate: asyncio.Event | None = None

    async def fetch(self, key: str) -> str | None:
        self.calls.append(key)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.values.get(key)

    async def fetch_many(self, keys: list[str]) -> dict[str, str | None]:
        """A batch call: one in `batches`, each of its keys in `calls` too."""
        self.batches.append(keys)
        self.calls += keys
        if self.error is not None:
            raise self.error
        return {key: self.values.get(key) for key in keys}


def make_cache(store: Store, clock: FakeClock, **options: float) -> Cache:
    settings = {"ttl": 300, "negative_ttl": 60, "max_stale": 3600, "max_entries": 100, **options}
    return Cache(
        store.fetch,
        store.fetch_many,
        metrics=Metrics(),
        timer=clock,
        jitter=lambda low, high: 0.8,
        **settings,  # type: ignore[arg-type]
    )


async def test_found_value_lives_for_the_ttl():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)

    assert await cache.get("k") == ("v", Status.MISS)
    clock.advance(299.9)
    assert await cache.get("k") == ("v", Status.HIT)
    assert store.calls == ["k"]
    clock.advance(0.1)
    assert await cache.get("k") == ("v", Status.MISS)
    assert store.calls == ["k", "k"]


async def test_miss_lives_for_the_negative_ttl():
    store, clock = Store(), FakeClock()
    cache = make_cache(store, clock)

    assert await cache.get("absent") == (None, Status.MISS)
    clock.advance(59.9)
    assert await cache.get("absent") == (None, Status.HIT)
    clock.advance(0.1)
    store.values["absent"] = "created"
    assert await cache.get("absent") == ("created", Status.MISS)
    assert len(store.calls) == 2


async def test_negative_ttl_zero_remembers_no_miss():
    store, clock = Store(), FakeClock()
    cache = make_cache(store, clock, negative_ttl=0)

    await cache.get("absent")
    await cache.get("absent")
    assert len(store.calls) == 2


async def test_entries_are_bounded_least_recently_used_first():
    store, clock = Store(**{f"k{i}": str(i) for i in range(5)}), FakeClock()
    cache = make_cache(store, clock, max_entries=3)
    for key in ("k0", "k1", "k2"):
        await cache.get(key)
    await cache.get("k0")  # k1 is now the least recently used
    await cache.get("k3")

    assert len(cache) == 3
    store.calls.clear()
    for key in ("k0", "k2", "k3"):
        assert (await cache.get(key))[1] is Status.HIT
    assert (await cache.get("k1"))[1] is Status.MISS
    assert store.calls == ["k1"]


async def test_entries_nobody_reads_leave_memory_once_they_can_no_longer_be_served():
    store, clock = Store(**{f"k{i}": str(i) for i in range(10)}), FakeClock()
    cache = make_cache(store, clock, max_stale=600)
    cache.fill()({f"k{i}": str(i) for i in range(10)})  # as a warm-up loads them; never read
    clock.advance(300 + 600 - 1)  # the TTL, then max_stale: servable as stale until then
    cache.fill()({"new": "v"})
    assert len(cache) == 11

    clock.advance(SWEEP_EVERY + 1)
    cache.fill()({"newer": "v"})
    assert len(cache) == 2  # swept: 10 unread expired entries, found at the first write a minute on


async def test_concurrent_requests_share_one_fetch():
    store, clock = Store(k="v"), FakeClock()
    store.gate = asyncio.Event()
    cache = make_cache(store, clock)

    waiting = [asyncio.ensure_future(cache.get(key)) for key in ["k"] * 300 + ["absent"] * 300]
    await asyncio.sleep(0)
    store.gate.set()
    answers = await asyncio.gather(*waiting)

    assert sorted(store.calls) == ["absent", "k"]
    assert answers[:300] == [("v", Status.MISS)] * 300
    assert answers[300:] == [(None, Status.MISS)] * 300


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch():
    store, clock = Store(k="v"), FakeClock()
    store.gate = asyncio.Event()
    cache = make_cache(store, clock)

    first = asyncio.ensure_future(cache.get("k"))
    second = asyncio.ensure_future(cache.get("k"))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert await second == ("v", Status.MISS)
    assert store.calls == ["k"]


async def test_transient_failure_serves_the_last_answer_until_max_stale(caplog):
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock, max_stale=1000)
    await cache.get("k")
    await cache.get("absent")
    store.error = THROTTLED
    clock.advance(300)

    with caplog.at_level(logging.WARNING, logger="sidecar.daemon.cache"):
        assert await cache.get("k") == ("v", Status.STALE)
        assert await cache.get("absent") == (None, Status.STALE)
        for _ in range(5):
            assert await cache.get("k") == ("v", Status.STALE)
    outage_warnings = [r for r in caplog.records if "serving cached answers" in r.getMessage()]
    assert len(outage_warnings) == 1

    clock.advance(1000)  # past ttl + max_stale: nothing left to serve
    with pytest.raises(UpstreamError):
        await cache.get("k")

    store.error = None
    clock.advance(3600)  # past any back-off
    assert await cache.get("k") == ("v", Status.MISS)


async def test_permanent_failure_drops_the_entry_and_serves_nothing_stale():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)
    await cache.get("k")
    store.error = DENIED
    clock.advance(300)

    with pytest.raises(UpstreamError) as raised:
        await cache.get("k")
    assert raised.value.code == "AccessDeniedException"
    store.error = THROTTLED
    clock.advance(3600)
    with pytest.raises(UpstreamError):
        await cache.get("k")  # the value is gone, even though this failure is transient


async def test_failing_key_answers_at_once_during_an_exponential_backoff():
    store, clock = Store(), FakeClock()
    store.error = THROTTLED
    cache = make_cache(store, clock)

    for expected_calls, wait in ((1, BACKOFF_FIRST), (2, 2 * BACKOFF_FIRST), (3, 4 * BACKOFF_FIRST)):
        with pytest.raises(UpstreamError):
            await cache.get("k")
        assert len(store.calls) == expected_calls
        for _ in range(10):  # during the back-off: no AWS call
            with pytest.raises(UpstreamError):
                await cache.get("k")
        assert len(store.calls) == expected_calls
        clock.advance(wait)

    store.error = None
    store.values["k"] = "v"
    assert await cache.get("k") == ("v", Status.MISS)


async def test_refresh_bypasses_a_fresh_entry_at_most_once_per_interval():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)
    await cache.get("k")
    store.values["k"] = "w"

    assert await cache.get("k", refresh=True) == ("v", Status.HIT)  # fetched moments ago
    clock.advance(REFRESH_MIN_INTERVAL)
    assert await cache.get("k", refresh=True) == ("w", Status.MISS)
    assert await cache.get("k") == ("w", Status.HIT)
    for _ in range(50):
        await cache.get("k", refresh=True)
    assert store.calls == ["k", "k"]


async def test_read_entries_are_refreshed_ahead_and_unread_ones_expire():
    store, clock = Store(read="1", unread="1"), FakeClock()
    cache = make_cache(store, clock)
    await cache.get("read")
    await cache.get("unread")
    store.calls.clear()
    await cache.get("read")  # read during its life

    clock.advance(239)  # before the refresh point (0.8 * 300)
    assert await cache.refresh_due() == 0
    clock.advance(1)
    store.values["read"] = "2"
    assert await cache.refresh_due() == 1
    assert store.calls == ["read"]

    clock.advance(61)  # past the first expiry: the refreshed entry is still fresh
    assert await cache.get("read") == ("2", Status.HIT)
    assert (await cache.get("unread"))[1] is Status.MISS


async def test_a_key_read_steadily_is_never_a_miss_after_the_first():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)
    statuses = []
    for _ in range(100):  # ten TTLs, a read and a refresh pass every 30 s
        statuses.append((await cache.get("k"))[1])
        clock.advance(30)
        await cache.refresh_due()

    assert statuses[0] is Status.MISS
    assert set(statuses[1:]) == {Status.HIT}
    assert len(store.calls) <= 1 + 10 * 300 / 240 + 1


async def test_refresh_ahead_batches_entries_coming_due_together():
    keys = {f"k{i}": str(i) for i in range(30)}
    store, clock = Store(**keys), FakeClock()
    cache = make_cache(store, clock)
    for i, key in enumerate(keys):
        await cache.get(key)
        await cache.get(key)
        clock.advance(i % 2)  # fetched over ~15 s

    clock.advance(240 - 15)
    assert await cache.refresh_due() == 30  # all within the coalescing window: one batch
    assert len(store.batches) == 1


async def test_failed_batch_refresh_keeps_entries_until_they_expire():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)
    await cache.get("k")
    await cache.get("k")
    store.error = THROTTLED
    clock.advance(240)

    assert await cache.refresh_due() == 1
    assert await cache.get("k") == ("v", Status.HIT)
    clock.advance(60)
    assert await cache.get("k") == ("v", Status.STALE)


async def test_a_slow_fetch_answers_the_stale_value_after_stale_after_and_goes_on():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock, stale_after=0.05)
    await cache.get("k")
    clock.advance(301)
    store.values["k"] = "w"
    store.gate = asyncio.Event()  # AWS does not answer

    assert await cache.get("k") == ("v", Status.STALE)
    assert await cache.get("k") == ("v", Status.STALE)
    assert store.calls == ["k", "k"]  # one fetch under way, shared
    store.gate.set()
    await asyncio.sleep(0)  # the fetch completes
    await asyncio.sleep(0)
    assert await cache.get("k") == ("w", Status.HIT)


async def test_background_refresh_backs_off_per_key_while_aws_fails():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)
    await cache.get("k")
    await cache.get("k")
    store.error = THROTTLED
    clock.advance(240)

    for _ in range(31):
        await cache.refresh_due()
        clock.advance(1)
    assert len(store.batches) <= 6  # back-off 1, 2, 4, 8, 16 s; not one batch a second
    assert await cache.get("k") == ("v", Status.HIT)

    store.error = None
    clock.advance(BACKOFF_MAX)
    assert await cache.refresh_due() == 1  # refreshed again once AWS answers
    assert await cache.get("k") == ("v", Status.HIT)


async def test_a_result_older_than_the_latest_decision_is_dropped():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock)
    fill = cache.fill()  # a warm-up or listing starts...
    store.values["k"] = "newer"
    assert await cache.get("k") == ("newer", Status.MISS)  # ...a lookup starts and ends after it...
    fill({"k": "older"})  # ...and the older answer lands last
    assert await cache.get("k") == ("newer", Status.HIT)

    store.error = DENIED
    clock.advance(REFRESH_MIN_INTERVAL)
    fill = cache.fill()
    with pytest.raises(UpstreamError):
        await cache.get("k", refresh=True)
    fill({"k": "newer"})  # started before the refusal: it must not undo it
    with pytest.raises(UpstreamError):
        await cache.get("k")


async def test_a_refresh_pass_skips_entries_that_are_not_due_without_looking_at_them():
    store, clock = Store(**{f"k{i}": "v" for i in range(1000)}), FakeClock()
    cache = make_cache(store, clock, max_entries=2000)
    for i in range(1000):
        await cache.get(f"k{i}")
        await cache.get(f"k{i}")
        if i % 10 == 9:
            clock.advance(1)  # ten a second: refresh points spread over 100 s

    clock.advance(240 - 100)
    assert await cache.refresh_due() == 310  # the ten due now, and those due within 10% of the TTL (30 s)
    assert await cache.refresh_due() == 0
    assert len(store.batches) == 1


async def test_keys_backing_off_are_asked_again_as_soon_as_aws_answers_again():
    store, clock = Store(k="v1", other="o"), FakeClock()
    cache = make_cache(store, clock)
    await cache.get("k")
    clock.advance(301)
    store.error = THROTTLED
    for wait in (1, 2, 4, 8, 16):  # a long outage: k's back-off has grown to 32 s
        assert await cache.get("k") == ("v1", Status.STALE)
        clock.advance(wait)
    assert await cache.get("k") == ("v1", Status.STALE)

    store.error = None  # AWS recovers, and the secret was rotated meanwhile
    store.values["k"] = "v2"
    assert await cache.get("other") == ("o", Status.MISS)  # the first answer after the outage
    assert await cache.get("k") == ("v2", Status.MISS)  # not 32 s more of the old version


async def test_while_one_fetch_is_stuck_later_requests_get_the_stale_answer_at_once():
    store, clock = Store(k="v"), FakeClock()
    cache = make_cache(store, clock, stale_after=0.3)
    await cache.get("k")
    clock.advance(301)
    store.gate = asyncio.Event()  # AWS does not answer

    assert await cache.get("k") == ("v", Status.STALE)  # waited its 0.3 s
    for _ in range(5):  # the fetch is still stuck: no more waiting
        assert await asyncio.wait_for(cache.get("k"), 0.15) == ("v", Status.STALE)
    store.gate.set()
