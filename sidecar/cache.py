"""A cache of opaque keys to `str | None` answers, in front of one fetch coroutine.

- found values live `ttl` seconds, misses (None) `negative_ttl` seconds;
- at most `max_entries`, least recently used evicted first (cachetools' TLRUCache);
- concurrent requests for one key share one fetch (single-flight);
- an entry read during its life is refreshed in the background at about 80% of it;
- when a fetch fails transiently the last answer is served for up to `max_stale` seconds
  past its expiry; a permanent failure drops it, so revocation and deletion take effect;
- a key whose fetch failed answers at once, with the failure, during a capped back-off.

Time comes from `timer`, so tests move the clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachetools import LRUCache, TLRUCache

from sidecar.metrics import Metrics
from sidecar.sources.aws import UpstreamError

log = logging.getLogger(__name__)

REFRESH_AT = (0.75, 0.85)  # refresh-ahead point, as a jittered fraction of the TTL
# Once something is due, whatever comes due within this fraction of the TTL joins its batch:
# fewer, fuller BatchGetSecretValue calls instead of one small one per tick.
COALESCE = 0.1
BACKOFF_FIRST = 1.0  # seconds
BACKOFF_MAX = 60.0
# `refresh=true` re-fetches a key at most this often: callers cannot run up the AWS bill.
REFRESH_MIN_INTERVAL = 5.0


class Status(str, enum.Enum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"


@dataclass
class Entry:
    value: str | None
    fetched_at: float
    fresh_until: float
    refresh_at: float
    read: bool = False  # read since it was fetched: worth refreshing ahead of expiry


@dataclass
class Failure:
    error: UpstreamError
    count: int
    retry_at: float


class Cache:
    def __init__(
        self,
        fetch: Callable[[str], Awaitable[str | None]],
        *,
        fetch_many: Callable[[list[str]], Awaitable[dict[str, str | None]]] | None = None,
        ttl: float,
        negative_ttl: float,
        max_stale: float,
        max_entries: int,
        metrics: Metrics,
        timer: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._fetch = fetch
        self._fetch_many = fetch_many
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_stale = max_stale
        self._metrics = metrics
        self._timer = timer
        self._jitter = jitter
        # An entry stays usable (as stale) until max_stale past its freshness, then goes.
        self._entries: TLRUCache[str, Entry] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, entry, _now: entry.fresh_until + max_stale, timer=timer
        )
        self._failures: LRUCache[str, Failure] = LRUCache(maxsize=max_entries)
        self._inflight: dict[str, asyncio.Future[str | None]] = {}
        self._outage: UpstreamError | None = None
        metrics.entries.set_function(lambda: len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, *, refresh: bool = False) -> tuple[str | None, Status]:
        """The answer for `key` and where it came from; raises UpstreamError if there is none."""
        now = self._timer()
        entry = self._entries.get(key)
        if refresh and entry is not None and now - entry.fetched_at < REFRESH_MIN_INTERVAL:
            refresh = False  # fetched moments ago: that answer is as good as a new one
        if entry is not None and not refresh and now < entry.fresh_until:
            entry.read = True
            self._metrics.lookups.labels("hit" if entry.value is not None else "negative_hit").inc()
            return entry.value, Status.HIT
        failure = self._failures.get(key)
        if failure is not None and now < failure.retry_at:
            return self._stale_or_raise(key, failure.error)
        try:
            value = await self._fetch_once(key)
        except UpstreamError as error:
            return self._stale_or_raise(key, error)
        self._metrics.lookups.labels("miss").inc()
        return value, Status.MISS

    def put(self, key: str, value: str | None) -> None:
        """Store an answer fetched elsewhere (a bulk warm-up or refresh)."""
        if key not in self._inflight:
            self._fetched(key, value)

    async def refresh_due(self) -> int:
        """Refresh the entries that were read and reached their refresh point; return how many."""
        now = self._timer()
        read = [(key, entry) for key, entry in list(self._entries.items()) if entry.read]
        if not any(entry.refresh_at <= now for _, entry in read):
            return 0
        horizon = now + self._ttl * COALESCE
        due = [key for key, entry in read if entry.refresh_at <= horizon and key not in self._inflight]
        found: dict[str, str | None] = {}
        if self._fetch_many is not None and due:
            try:
                found = await self._fetch_many(due)
            except UpstreamError as error:
                # AWS is failing: the entries live on to their expiry, then serve stale.
                self._metrics.refresh_failures.inc()
                log.debug("batch refresh of %d entries failed: %s", len(due), error)
                return 0
            for key, value in found.items():
                self.put(key, value)
        rest = [key for key in due if key not in found]
        results = await asyncio.gather(*(self._fetch_once(key) for key in rest), return_exceptions=True)
        for result in results:
            if isinstance(result, UpstreamError):
                self._metrics.refresh_failures.inc()
            elif isinstance(result, BaseException):
                raise result
        return len(due)

    async def run_refresher(self, every: float) -> None:
        """Refresh ahead forever; `every` is how often due entries are looked for."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh_due()
            except Exception:
                log.exception("refresh-ahead pass failed; retrying in %.1fs", every)

    # --- internals ---

    def _fetch_once(self, key: str) -> Awaitable[str | None]:
        """Join the fetch of `key` under way, or start one. Cancelling a waiter spares the fetch."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fetch_and_store(key))
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return asyncio.shield(future)

    async def _fetch_and_store(self, key: str) -> str | None:
        try:
            value = await self._fetch(key)
        except UpstreamError as error:
            self._note_failure(key, error)
            raise
        self._fetched(key, value)
        return value

    def _fetched(self, key: str, value: str | None) -> None:
        self._failures.pop(key, None)
        if self._outage is not None:
            log.warning("AWS answers again after %s; fresh answers resume", self._outage.code)
            self._outage = None
        now = self._timer()
        life = self._ttl if value is not None else self._negative_ttl
        if life <= 0:
            self._entries.pop(key, None)
            return
        refresh_at = now + life * self._jitter(*REFRESH_AT)
        self._entries[key] = Entry(value, fetched_at=now, fresh_until=now + life, refresh_at=refresh_at)

    def _note_failure(self, key: str, error: UpstreamError) -> None:
        previous = self._failures.get(key)
        count = previous.count + 1 if previous else 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (count - 1))
        self._failures[key] = Failure(error, count, self._timer() + delay)
        if not error.transient:
            # AccessDenied and the like: never serve what we may no longer be allowed to read.
            self._entries.pop(key, None)
            if count == 1:  # once per refused key, not once per request during its back-off
                log.warning("fetch of %s refused: %s (%s). AWS said: %s", key, error, error.hint, error.detail)
        elif self._outage is None:  # once per outage, however many keys it hits
            self._outage = error
            log.warning(
                "AWS failed (%s): serving cached answers for up to %.0fs past their TTL, retrying each key "
                "with back-off until it recovers",
                error.code,
                self._max_stale,
            )

    def _stale_or_raise(self, key: str, error: UpstreamError) -> tuple[str | None, Status]:
        entry = self._entries.get(key) if error.transient else None
        if entry is None:
            raise error
        self._metrics.lookups.labels("stale").inc()
        return entry.value, Status.STALE
