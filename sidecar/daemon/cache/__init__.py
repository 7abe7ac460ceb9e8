"""A cache of opaque keys to `str | None` answers, in front of one fetch coroutine.

- found values live `ttl` seconds, misses (None) `negative_ttl` seconds;
- at most `max_entries` keys, least recently used evicted first (`entry.Entries`);
- concurrent requests for one key share one fetch (`flight.SingleFlight`);
- an entry read during its life is refreshed in the background at about 80% of it
  (`refresher.Refresher`);
- when a fetch fails transiently the last answer is served for up to `max_stale` seconds past
  its expiry, and a request does not wait more than `stale_after` for a slow AWS when such an
  answer exists; a permanent failure drops it, so revocation and deletion take effect;
- a key whose fetch failed answers at once during a capped back-off (`backoff.BackOff`);
- every fetch takes a ticket when it starts, and a result older than the key's latest decision
  is dropped: a late refresh never undoes a revocation or a newer value;
- after each listing, `revalidate` fetches again, in one batch, the keys the listing says changed
  and the misses read since the listing before; misses nobody read lapse.

Time comes from `timer`, so tests move the clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from sidecar.daemon.cache.backoff import BACKOFF_FIRST, BACKOFF_MAX, BackOff
from sidecar.daemon.cache.entry import NOT_CACHED, Answer, Entries, Entry, Status, _NotCached
from sidecar.daemon.cache.flight import SingleFlight
from sidecar.daemon.cache.refresher import REFRESH_AT, Refresher
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import UpstreamError

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "NOT_CACHED", "REFRESH_MIN_INTERVAL", "Cache", "Entry", "Status"]

log = logging.getLogger(__name__)

# `refresh=true` re-fetches a key at most this often: callers cannot run up the AWS bill.
REFRESH_MIN_INTERVAL = 5.0
# Longest a request waits on AWS when a stale answer could be served instead.
STALE_AFTER = 1.0

Fetched = Mapping[str, Answer | UpstreamError]


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
        self._fetch_many = fetch_many
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_stale = max_stale
        self._metrics = metrics
        self._lookups = metrics.lookups.counts
        self._timer = timer
        self._jitter = jitter
        # Bumped by every settled fetch and every entry dropped: an answer built from `peek`
        # holds while it is unchanged.
        self.changes = 0
        self._entries = Entries(max_entries, max_stale, BACKOFF_MAX, timer, self._changed)
        self._tickets = itertools.count(1)
        self._backoff = BackOff(max_stale)
        self._refresher = Refresher(self._entries, ttl, negative_ttl)
        self._flight = SingleFlight(fetch, self._settle, self._ticket, self._entries, stale_after)
        metrics.entries.set_function(lambda: len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, *, refresh: bool = False, absent_since: float | None = None) -> tuple[Answer, Status]:
        """The answer for `key` and where it came from; raises UpstreamError if there is none.

        `absent_since`: when a listing last found no such name. With nothing cached, that miss
        is the stale answer while AWS fails or is slow, as an expired entry's would be."""
        now = self._timer()
        entry = self._entries.get(key)
        if entry is None and absent_since is not None:
            entry = Entry(generation=0, known=True, fresh_until=absent_since)
            self._entries.keep(key, entry)
        if entry is not None:
            if refresh and entry.known and now - entry.fetched_at < REFRESH_MIN_INTERVAL:
                refresh = False  # fetched moments ago: that answer is as good as a new one
            if not refresh and self._fresh(key, entry, now):
                self._lookups["hit" if entry.value is not None else "negative_hit"] += 1
                return entry.value, Status.HIT
            if self._backoff.waits(entry, now):
                assert entry.failure is not None
                return self._stale_or_raise(key, entry.failure)
        fetch = self._flight.join(key, entry)
        try:
            if entry is not None and self._servable(entry, now):
                # Something to fall back on: wait for the fetch until its stale point at most.
                stale = None if await self._flight.landed_in_time(fetch, entry) else self._stale(key)
                if stale is not None:
                    return stale
            value = await asyncio.shield(fetch)
        except UpstreamError as error:
            return self._stale_or_raise(key, error)
        self._lookups["miss"] += 1
        return value, Status.MISS

    def peek(self, key: str) -> Entry | _NotCached:
        """The entry of `key` if its answer is fresh, with nothing to await (its `value` holds
        until its `fresh_until`, unless `changes` moves first), else NOT_CACHED. Not counted in
        the metrics: the caller counts it in `lookups` once it has used it."""
        try:
            entry = self._entries[key]  # not `get`: that asks the TLRU cache twice
        except KeyError:
            return NOT_CACHED
        return entry if self._fresh(key, entry, self._timer()) else NOT_CACHED

    def fill(self) -> Callable[[Fetched], None]:
        """Take a ticket now, before fetching elsewhere (warm-up, listing): the function returned
        stores those results unless a fetch that started later has settled a key first."""
        ticket = self._ticket()

        def store(results: Fetched) -> None:
            for key, result in results.items():
                self._settle(key, ticket, result)

        return store

    async def refresh_due(self) -> int:
        """Refresh the entries that were read and reached their refresh point; return how many were
        asked for (whether AWS answered or not)."""
        now = self._timer()
        if not self._refresher.any_due(now):
            return 0
        batch = self._refresher.take_due(now)
        if batch:
            await self._refresh(batch)
        return len(batch)

    async def revalidate(self, changed: set[str], since: float, due_before: float) -> int:
        """After a listing that started at `since` (on `timer`): fetch again, in one batch, the
        held keys in `changed` and the misses fetched before it and read since, so that a secret
        created meanwhile is found whatever the listing shows, with the read entries due before
        the next listing (`due_before`); the misses nobody read lapse, and are asked for again at
        their next read. A changed key that could not be fetched again is no longer fresh: its
        next lookup asks AWS, and gets the old value as a stale answer while AWS fails. Returns how
        many keys were asked for."""
        now = self._timer()
        first = self._ticket()  # every fetch from here on takes a later one
        batch = self._refresher.take_due(now, until=due_before)
        for key in list(self._entries):
            entry = self._entries.get(key)
            if entry is None or entry.fetch is not None or entry.retry_at > now:
                continue  # gone, being fetched (that answer is newer than the listing), or backing off
            if key in changed:
                batch[key] = entry
            elif entry.known and entry.value is None and entry.fetched_at < since <= entry.fresh_until:
                if entry.read:
                    batch[key] = entry
                else:
                    self._expire(key, entry, since)  # lapsed: asked again when read
        if batch:
            await self._refresh(batch)
        for key in changed:
            entry = self._entries.get(key)
            if entry is not None and (entry.generation < first or entry.failure is not None):
                self._expire(key, entry, now)
        return len(batch)

    async def announced(self, keys: set[str]) -> dict[str, str]:
        """An event said these keys changed: fetch again at once, by name and through the single
        flight, those the cache holds (found or missed; the others are asked for at their next
        read). A key that no fetch started after the event brought up to date is no longer fresh:
        its next lookup asks AWS. Returns each held key's outcome: changed, unchanged or failed."""
        first = self._ticket()  # every fetch from here on takes a later one
        held = {key: entry for key in keys if (entry := self._entries.get(key)) is not None}
        before = {key: entry.value for key, entry in held.items()}
        fetches = [self._flight.join(key, entry) for key, entry in held.items()]
        results = await asyncio.gather(*fetches, return_exceptions=True)
        now = self._timer()
        outcomes = {}
        for key, result in zip(held, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, UpstreamError):
                raise result
            entry = self._entries.get(key)
            if entry is None:
                continue  # evicted meanwhile
            if entry.generation < first or entry.failure is not None:
                self._expire(key, entry, now)  # a fetch from before the event, or none that worked
                outcomes[key] = "failed"
            else:
                outcomes[key] = "changed" if entry.value != before[key] else "unchanged"
        return outcomes

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
        await self._flight.aclose()

    # --- internals ---

    def _ticket(self) -> int:
        return next(self._tickets)

    def _changed(self) -> None:
        self.changes += 1

    def _fresh(self, key: str, entry: Entry, now: float) -> bool:
        if not entry.known or now >= entry.fresh_until:
            return False
        if not entry.read:
            self._refresher.mark_read(key, entry, now)
        return True

    def _expire(self, key: str, entry: Entry, at: float) -> None:
        """No longer fresh from `at`: the answer stays servable as stale."""
        if entry.fresh_until > at:
            entry.fresh_until = at
            self._entries.keep(key, entry)
            self.changes += 1

    async def _refresh(self, batch: dict[str, Entry]) -> None:
        if self._fetch_many is None:
            fetches = [self._flight.join(key, entry) for key, entry in batch.items()]
            results = await asyncio.gather(*fetches, return_exceptions=True)
            for result in results:
                if isinstance(result, UpstreamError):
                    self._metrics.refresh_failures.inc()
                elif isinstance(result, BaseException):
                    raise result
            return
        ticket = self._ticket()
        try:
            found: Fetched = await self._fetch_many(list(batch))
        except UpstreamError as error:
            # AWS is failing: each entry backs off, lives on to its expiry, then serves stale.
            log.debug("batch refresh of %d entries failed: %s", len(batch), error.code)
            found = dict.fromkeys(batch, error)
        for key, entry in batch.items():
            result = found.get(key)
            if self._entries.get(key) is not entry:
                continue  # evicted meanwhile: nobody holds it any more
            if isinstance(result, UpstreamError):
                self._metrics.refresh_failures.inc()
            if key in found:
                self._settle(key, ticket, result)

    def _settle(
        self, key: str, ticket: int, result: Answer | UpstreamError, fetch: asyncio.Future[Answer] | None = None
    ) -> None:
        """Apply the outcome of the fetch that took `ticket`, unless a later one was applied."""
        entry = self._entries.get(key)
        if entry is None:
            entry = Entry(generation=ticket)
        elif ticket < entry.generation:
            return  # older than what the entry shows: a late answer must not undo it
        if fetch is not None and entry.fetch is fetch:
            entry.fetch = None  # done: the entry's expiry follows its deadlines again
        entry.generation = ticket
        self.changes += 1
        now = self._timer()
        if isinstance(result, UpstreamError):
            self._backoff.failed(key, entry, _bare(result), now)
        else:
            self._backoff.answered(ticket)
            life = self._ttl if result is not None else self._negative_ttl
            entry.answer(result, now, life, refresh_at=now + life * self._jitter(*REFRESH_AT))
        self._entries.keep(key, entry)
        if entry.known:
            self._refresher.schedule(key, entry)

    def _servable(self, entry: Entry, now: float) -> bool:
        return entry.known and now < entry.fresh_until + self._max_stale

    def _stale_or_raise(self, key: str, error: UpstreamError) -> tuple[Answer, Status]:
        stale = self._stale(key) if error.transient else None
        if stale is None:
            raise _bare(error) from None
        return stale

    def _stale(self, key: str) -> tuple[Answer, Status] | None:
        """The last answer, while it may still be served."""
        entry = self._entries.get(key)
        if entry is None or not self._servable(entry, self._timer()):
            return None
        self._lookups["stale"] += 1
        return entry.value, Status.STALE


def _bare(error: UpstreamError) -> UpstreamError:
    """A copy of `error` without traceback or context, for an entry to keep and for each request to
    raise. Raising one exception object again chains the raising frames onto its traceback: every
    request answered with a kept failure would stay in memory (its request, its connection) while
    the entry keeps it; and the failed call's own frames hold botocore's and aiohttp's responses."""
    return UpstreamError(error.api, error.code, error.transient, error.detail)
