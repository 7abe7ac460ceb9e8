"""A cache of opaque keys to `str | None` answers, in front of one fetch coroutine.

- found values live `ttl` seconds, misses (None) `negative_ttl` seconds;
- at most `max_entries` keys, least recently used evicted first (cachetools' TLRUCache);
- concurrent requests for one key share one fetch (single-flight);
- an entry read during its life is refreshed in the background at about 80% of it, from a
  heap ordered by due time, so a pass costs nothing for the entries that are not due;
- when a fetch fails transiently the last answer is served for up to `max_stale` seconds
  past its expiry, and a request does not wait more than `stale_after` for a slow AWS when
  such an answer exists; a permanent failure drops it, so revocation and deletion take effect;
- a key whose fetch failed, in the foreground or the background, answers at once during a
  capped back-off instead of calling AWS again;
- every fetch takes a ticket when it starts, and a result older than the key's latest
  decision is dropped: a late refresh never undoes a revocation or a newer value;
- after each listing, `revalidate` fetches again, in one batch, the keys the listing says changed
  and the misses read since the listing before; misses nobody read lapse.

Time comes from `timer`, so tests move the clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from cachetools import TLRUCache

from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources import UpstreamError

log = logging.getLogger(__name__)

REFRESH_AT = (0.75, 0.85)  # refresh-ahead point, as a jittered fraction of the TTL
# Once something is due, whatever comes due within this fraction of its own lifetime (TTL, or
# negative TTL for a miss) joins its batch: fewer, fuller BatchGetSecretValue calls instead of one
# small one per tick, without refreshing a short-lived miss many times a TTL.
COALESCE = 0.1
BACKOFF_FIRST = 1.0  # seconds
BACKOFF_MAX = 60.0
# `refresh=true` re-fetches a key at most this often: callers cannot run up the AWS bill.
REFRESH_MIN_INTERVAL = 5.0
# Longest a request waits on AWS when a stale answer could be served instead.
STALE_AFTER = 1.0

Answer = str | None
Fetched = Mapping[str, Answer | UpstreamError]


class _NotCached(enum.Enum):
    NOT_CACHED = "not cached"


# What `peek` returns when only `get` can tell: a fetch, a back-off or a stale answer is involved.
NOT_CACHED = _NotCached.NOT_CACHED


class Status(str, enum.Enum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"


@dataclass(eq=False, slots=True)  # slots: 48 bytes less per entry (of ~420 besides key and value)
class Record:
    """Everything the cache knows of one key."""

    generation: int  # the ticket of the fetch whose outcome this record shows
    known: bool = False  # holds an answer (`value`, None for a miss) that may be served
    value: Answer = None
    fetched_at: float = 0.0
    fresh_until: float = 0.0
    refresh_at: float = 0.0
    read: bool = False  # read since it was fetched: worth refreshing ahead of expiry
    failure: UpstreamError | None = None
    failures: int = 0
    retry_at: float = 0.0
    fetch: asyncio.Future[Answer] | None = None  # the foreground fetch under way
    stale_at: float = 0.0  # event-loop time after which requests stop waiting for that fetch

    def due_at(self) -> float:
        return max(self.refresh_at, self.retry_at)


class Cache:
    def __init__(
        self,
        fetch: Callable[[str], Awaitable[Answer]],
        *,
        fetch_many: Callable[[list[str]], Awaitable[Fetched]] | None = None,
        ttl: float,
        negative_ttl: float,
        max_stale: float,
        max_entries: int,
        metrics: Metrics,
        stale_after: float = STALE_AFTER,
        timer: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._fetch = fetch
        self._fetch_many = fetch_many
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_stale = max_stale
        self._stale_after = stale_after
        self._metrics = metrics
        self.lookups = metrics.lookups.counts  # the resolver counts the answers it memoised here too
        self.timer = timer
        self._jitter = jitter
        # Bumped by every settled fetch: an answer built from `peek` holds while it is unchanged.
        self.changes = 0
        self._records: TLRUCache[str, Record] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, record, _now: _expiry(record, max_stale), timer=timer
        )
        self._tickets = itertools.count(1)
        self._fetches: set[asyncio.Future[Answer]] = set()  # under way, for aclose()
        self._due: list[tuple[float, int, str]] = []  # (due time, generation, key): refresh-ahead
        self._outage: UpstreamError | None = None
        # The ticket of the first answer after an outage: back-offs from before it are over.
        self._recovered = 0
        metrics.entries.set_function(lambda: len(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def ticket(self) -> int:
        """Take before fetching elsewhere (warm-up, listing); pass to `put_many` with the results."""
        return next(self._tickets)

    async def get(self, key: str, *, refresh: bool = False, absent_since: float | None = None) -> tuple[Answer, Status]:
        """The answer for `key` and where it came from; raises UpstreamError if there is none.

        `absent_since`: when a listing last found no such name. With nothing cached, that miss
        is the stale answer while AWS fails or is slow, as an expired entry's would be."""
        now = self.timer()
        record = self._records.get(key)
        if record is None and absent_since is not None:
            record = self._records[key] = Record(generation=0, known=True, fresh_until=absent_since)
        if record is not None:
            if refresh and record.known and now - record.fetched_at < REFRESH_MIN_INTERVAL:
                refresh = False  # fetched moments ago: that answer is as good as a new one
            if not refresh and (value := self._fresh(key, record, now)) is not NOT_CACHED:
                self.lookups["hit" if value is not None else "negative_hit"] += 1
                return value, Status.HIT
            if record.failure is not None and now < record.retry_at and not self._outage_over(record):
                return self._stale_or_raise(key, record.failure)
        fetch = self._fetch_once(key, record)
        try:
            if record is not None and self._servable(record, now):
                # Something to fall back on: a slow or black-holed AWS delays each fetch's
                # requests by `stale_after` at most, all together, not one after another.
                wait = record.stale_at - asyncio.get_running_loop().time()
                done = fetch.done() or (wait > 0 and bool((await asyncio.wait({fetch}, timeout=wait))[0]))
                stale = None if done else self._stale(key)
                if stale is not None:
                    return stale
            value = await asyncio.shield(fetch)
        except UpstreamError as error:
            return self._stale_or_raise(key, error)
        self.lookups["miss"] += 1
        return value, Status.MISS

    def peek(self, key: str) -> tuple[Answer, float] | _NotCached:
        """The fresh answer for `key` with nothing to await and the time it stays fresh until (on
        `timer`, unless `changes` moves first), or NOT_CACHED. Not counted in the metrics: the
        caller counts it in `lookups` once it has used it."""
        try:
            record = self._records[key]  # not `get`: that asks the TLRU cache twice
        except KeyError:
            return NOT_CACHED
        value = self._fresh(key, record, self.timer())
        return NOT_CACHED if value is NOT_CACHED else (value, record.fresh_until)

    def _fresh(self, key: str, record: Record, now: float) -> Answer | _NotCached:
        if not record.known or now >= record.fresh_until:
            return NOT_CACHED
        if not record.read:
            self._mark_read(key, record, now)
        return record.value

    def put_many(self, results: Fetched, ticket: int) -> None:
        """Store results fetched elsewhere (warm-up, listing) by a fetch that took `ticket`."""
        for key, result in results.items():
            self._settle(key, ticket, result)

    async def refresh_due(self) -> int:
        """Refresh the entries that were read and reached their refresh point; return how many were
        asked for (whether AWS answered or not)."""
        now = self.timer()
        if not self._due or self._due[0][0] > now:
            return 0
        batch = self._take_due(now)
        if batch:
            await self._refresh(batch)
        return len(batch)

    def _take_due(self, now: float, until: float | None = None) -> dict[str, Record]:
        """The read entries to refresh now, off the heap: those due, with those coming due within
        COALESCE of their lifetime, or with every one due by `until` if given."""
        due = self._due
        horizon = now + max(self._ttl, self._negative_ttl) * COALESCE if until is None else until
        batch: dict[str, Record] = {}
        later: list[tuple[float, int, str]] = []
        while due and due[0][0] <= horizon:
            item = heapq.heappop(due)
            when, generation, key = item
            record = self._records.get(key)
            if record is None or record.generation != generation or record.fetch is not None or key in batch:
                continue  # gone, superseded, or being fetched: a newer item stands for it
            life = self._ttl if record.value is not None else self._negative_ttl
            soon = now + life * COALESCE if until is None else until
            if record.retry_at > now or (when > now and (not record.read or when > soon)):
                later.append(item)  # backing off, or not due yet (and may still be read)
            elif record.read:
                batch[key] = record
            # due but never read: it expires; a read before then queues it again
        for item in later:
            heapq.heappush(due, item)
        return batch

    async def revalidate(self, changed: set[str], since: float, due_before: float) -> int:
        """After a listing that started at `since` (on `timer`): fetch again, in one batch, the
        held keys in `changed` and the misses fetched before it and read since, so that a secret
        created meanwhile is found whatever the listing shows, with the read entries due before
        the next listing (`due_before`); the misses nobody read lapse, and are asked for again at
        their next read. A changed key that could not be fetched again is no longer fresh: its
        next lookup asks AWS, and gets the old value as a stale answer while AWS fails. Returns how
        many keys were asked for."""
        now = self.timer()
        first = self.ticket()  # every fetch from here on takes a later one
        batch = self._take_due(now, until=due_before)
        for key in list(self._records):
            record = self._records.get(key)
            if record is None or record.fetch is not None or record.retry_at > now:
                continue  # gone, being fetched (that answer is newer than the listing), or backing off
            if key in changed:
                batch[key] = record
            elif record.known and record.value is None and record.fetched_at < since <= record.fresh_until:
                if record.read:
                    batch[key] = record
                else:
                    self._expire(key, record, since)  # lapsed: asked again when read
        if batch:
            await self._refresh(batch)
        for key in changed:
            record = self._records.get(key)
            if record is not None and (record.generation < first or record.failure is not None):
                self._expire(key, record, now)
        return len(batch)

    def _expire(self, key: str, record: Record, at: float) -> None:
        """No longer fresh from `at`: the answer stays servable as stale."""
        if record.fresh_until > at:
            record.fresh_until = at
            self._records[key] = record  # re-timed
            self.changes += 1

    async def run_refresher(self, every: float) -> None:
        """Refresh ahead forever; `every` is how often due entries are looked for."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh_due()
            except Exception:
                log.exception("refresh-ahead pass failed; retrying in %.1fs", every)

    async def aclose(self) -> None:
        """Cancel the fetches under way: nothing may use the AWS client after this."""
        fetches = list(self._fetches)
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    # --- internals ---

    async def _refresh(self, batch: dict[str, Record]) -> None:
        if self._fetch_many is None:
            fetches = [self._fetch_once(key, record) for key, record in batch.items()]
            results = await asyncio.gather(*fetches, return_exceptions=True)
            for result in results:
                if isinstance(result, UpstreamError):
                    self._metrics.refresh_failures.inc()
                elif isinstance(result, BaseException):
                    raise result
            return
        ticket = self.ticket()
        try:
            found: Fetched = await self._fetch_many(list(batch))
        except UpstreamError as error:
            # AWS is failing: each entry backs off, lives on to its expiry, then serves stale.
            log.debug("batch refresh of %d entries failed: %s", len(batch), error.code)
            found = dict.fromkeys(batch, error)
        for key, record in batch.items():
            result = found.get(key)
            if self._records.get(key) is not record:
                continue  # evicted meanwhile: nobody holds it any more
            if isinstance(result, UpstreamError):
                self._metrics.refresh_failures.inc()
            if key in found:
                self._settle(key, ticket, result)

    def _mark_read(self, key: str, record: Record, now: float) -> None:
        record.read = True
        if now >= record.due_at():  # its queued refresh may have passed it by while unread
            heapq.heappush(self._due, (now, record.generation, key))

    def _fetch_once(self, key: str, record: Record | None) -> asyncio.Future[Answer]:
        """Join the fetch of `key` under way, or start one."""
        if record is not None and record.fetch is not None:
            return record.fetch
        if record is None:
            record = Record(generation=0)
        fetch = asyncio.ensure_future(self._fetch_and_settle(key, self.ticket()))
        record.fetch = fetch
        record.stale_at = asyncio.get_running_loop().time() + self._stale_after
        self._fetches.add(fetch)
        fetch.add_done_callback(lambda done: self._fetch_done(record, done))
        self._records[key] = record  # kept while the fetch is under way
        return fetch

    async def _fetch_and_settle(self, key: str, ticket: int) -> Answer:
        try:
            result: Answer | UpstreamError = await self._fetch(key)
        except UpstreamError as error:
            result = error
        self._settle(key, ticket, result, fetch=asyncio.current_task())
        if isinstance(result, UpstreamError):
            raise result
        return result

    def _settle(
        self, key: str, ticket: int, result: Answer | UpstreamError, fetch: asyncio.Future[Answer] | None = None
    ) -> None:
        """Apply the outcome of the fetch that took `ticket`, unless a later one was applied."""
        record = self._records.get(key)
        if record is None:
            record = Record(generation=ticket)
        elif ticket < record.generation:
            return  # older than what the record shows: a late answer must not undo it
        if fetch is not None and record.fetch is fetch:
            record.fetch = None  # done: the record's expiry follows its deadlines again
        record.generation = ticket
        self.changes += 1
        now = self.timer()
        if isinstance(result, UpstreamError):
            self._note_failure(key, record, result, now)
        else:
            if self._outage is not None:
                log.warning("AWS answers again after %s; fresh answers resume", self._outage.code)
                self._outage = None
                self._recovered = ticket
            self._answered(record, result, now)
        self._records[key] = record  # re-timed
        if record.known:
            heapq.heappush(self._due, (record.due_at(), ticket, key))

    def _answered(self, record: Record, value: Answer, now: float) -> None:
        record.failure, record.failures, record.retry_at = None, 0, 0.0
        life = self._ttl if value is not None else self._negative_ttl
        record.known = life > 0
        record.value = value if record.known else None
        record.fetched_at = now
        record.fresh_until = now + life
        record.refresh_at = now + life * self._jitter(*REFRESH_AT)
        record.read = False

    def _note_failure(self, key: str, record: Record, error: UpstreamError, now: float) -> None:
        record.failures += 1
        record.failure = error
        record.retry_at = now + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (record.failures - 1))
        if not error.transient:
            # AccessDenied and the like: never serve what we may no longer be allowed to read.
            record.known, record.value, record.fresh_until = False, None, 0.0
            if record.failures == 1:  # once per refused key, not once per request during its back-off
                log.warning("fetch of %s refused: %s (%s). AWS said: %s", key, error, error.hint, error.detail)
        elif self._outage is None:  # once per outage, however many keys it hits
            self._outage = error
            log.warning(
                "AWS failed (%s): serving cached answers for up to %.0fs past their TTL, retrying each key "
                "with back-off until it recovers",
                error.code,
                self._max_stale,
            )

    def _fetch_done(self, record: Record, fetch: asyncio.Future[Answer]) -> None:
        self._fetches.discard(fetch)
        if record.fetch is fetch:
            record.fetch = None  # cancelled: settled fetches cleared it already
        if not fetch.cancelled():
            fetch.exception()  # retrieved: a failure nobody waited for is not an "unhandled" error

    def _outage_over(self, record: Record) -> bool:
        """The record backs off from an outage that has ended since: ask AWS again now."""
        return record.failure is not None and record.failure.transient and record.generation < self._recovered

    def _servable(self, record: Record, now: float) -> bool:
        return record.known and now < record.fresh_until + self._max_stale

    def _stale_or_raise(self, key: str, error: UpstreamError) -> tuple[Answer, Status]:
        stale = self._stale(key) if error.transient else None
        if stale is None:
            raise error
        return stale

    def _stale(self, key: str) -> tuple[Answer, Status] | None:
        """The last answer, while it may still be served."""
        record = self._records.get(key)
        if record is None or not self._servable(record, self.timer()):
            return None
        self.lookups["stale"] += 1
        return record.value, Status.STALE


def _expiry(record: Record, max_stale: float) -> float:
    """Kept while its answer may be served stale, its back-off matters, or a fetch is under way."""
    if record.fetch is not None:
        return float("inf")
    return max(record.fresh_until + max_stale, record.retry_at + BACKOFF_MAX)
