"""A cache of opaque keys to `str | None` values, in front of a fetch coroutine and a batch one.

- found values live `ttl` seconds, misses (None) `negative_ttl` seconds;
- at most `max_entries` keys, least recently used evicted first (`store.Entries`);
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

Each part of a key's state has one owner: its answer and deadlines the entry, its failures the
back-off, its fetch under way the single flight. This class takes the tickets, applies each
outcome (`_settle`) and re-times the entry in the store after every change. Time comes from
`timer`, so tests move the clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from sidecar.daemon.cache.backoff import BACKOFF_MAX, BackOff
from sidecar.daemon.cache.entry import Entry, Status, Value
from sidecar.daemon.cache.flight import SingleFlight
from sidecar.daemon.cache.refresher import REFRESH_AT, Refresher
from sidecar.daemon.cache.store import Entries
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import UpstreamError

log = logging.getLogger(__name__)

# `refresh=true` re-fetches a key at most this often: callers cannot run up the AWS bill.
REFRESH_MIN_INTERVAL = 5.0
# Longest a request waits on AWS when a stale answer could be served instead.
STALE_AFTER = 1.0

Fetched = Mapping[str, Value | UpstreamError]


class Cache:
    def __init__(
        self,
        fetch: Callable[[str], Awaitable[Value]],
        fetch_many: Callable[[list[str]], Awaitable[Fetched]],
        *,
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
        self._timer = timer
        self._jitter = jitter
        # Bumped by every settled fetch and every entry expired or dropped: an answer built from
        # `peek` holds while it is unchanged.
        self.changes = 0
        self._tickets = itertools.count(1)
        self._backoff = BackOff(max_stale)
        self._flight = SingleFlight(fetch, self._settle, stale_after)
        self._entries = Entries(max_entries, self._expiry, timer, self._dropped)
        self._refresher = Refresher(self._entries, self._backoff, self._flight, ttl, negative_ttl)
        metrics.entries.set_function(lambda: len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: str) -> Entry | None:
        """The entry of `key` if its answer is fresh, with nothing to await (its `value` holds
        until its `fresh_until`, unless `changes` moves first), else None: only `get` can tell."""
        try:
            entry = self._entries[key]  # not `get`: a fresh entry cannot have expired
        except KeyError:
            return None
        return entry if self._fresh(key, entry, self._timer()) else None

    async def get(self, key: str, *, refresh: bool = False, absent_since: float | None = None) -> tuple[Value, Status]:
        """The value of `key` and where it came from; raises UpstreamError if there is none.

        `absent_since`: when a listing last found no such name. With nothing cached, that miss
        is the stale answer while AWS fails or is slow, as an expired entry's would be."""
        now = self._timer()
        entry = self._entries.get(key)
        if entry is None and absent_since is not None:
            entry = Entry(ticket=0, known=True, fresh_until=absent_since)
            self._entries.keep(key, entry)
        if entry is not None:
            if refresh and entry.known and now - entry.fetched_at < REFRESH_MIN_INTERVAL:
                refresh = False  # fetched moments ago: that value is as good as a new one
            if not refresh and self._fresh(key, entry, now):
                return entry.value, Status.HIT
            failure = self._backoff.waits(key, entry.ticket, now)
            if failure is not None:
                return self._stale_or_raise(key, failure)
        fetch = self._join(key, entry)
        try:
            if entry is not None and self._servable(entry, now):
                # Something to fall back on: wait for the fetch until its stale point at most.
                stale = None if await self._flight.landed_in_time(key, fetch) else self._stale(key)
                if stale is not None:
                    return stale
            value = await asyncio.shield(fetch)
        except UpstreamError as error:
            return self._stale_or_raise(key, error)
        return value, Status.MISS

    def fill(self) -> Callable[[Fetched], None]:
        """Take a ticket now, before fetching elsewhere (warm-up, listing): the function returned
        stores those results unless a fetch that started later has settled a key first."""
        ticket = self._ticket()

        def store(results: Fetched) -> None:
            now = self._timer()
            for key, result in results.items():
                self._settle(key, ticket, result, now)

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
            if entry is None or self._flight.under_way(key) or self._backoff.retry_at(key) > now:
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
        self._expire_unless_settled(changed, first, now)
        return len(batch)

    async def announced(self, keys: set[str]) -> dict[str, str]:
        """An event said these keys changed: fetch again at once, by name and through the single
        flight, those the cache holds (found or missed; the others are asked for at their next
        read). A key that no fetch started after the event brought up to date is no longer fresh:
        its next lookup asks AWS. Returns each held key's outcome: changed, unchanged or failed."""
        first = self._ticket()  # every fetch from here on takes a later one
        held = {key: entry for key in keys if (entry := self._entries.get(key)) is not None}
        before = {key: entry.value for key, entry in held.items()}
        fetches = [self._join(key, entry) for key, entry in held.items()]
        results = await asyncio.gather(*fetches, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, UpstreamError):
                raise result
        failed = self._expire_unless_settled(held, first, self._timer())
        outcomes = {}
        for key in held:
            entry = self._entries.get(key)
            if entry is not None:  # else evicted meanwhile
                outcomes[key] = "failed" if key in failed else "changed" if entry.value != before[key] else "unchanged"
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

    def _expiry(self, key: str, entry: Entry) -> float:
        """When the store drops `entry`: once it may no longer be served stale and its back-off
        no longer matters; never while it is being fetched."""
        if self._flight.under_way(key) is not None:
            return float("inf")
        return max(entry.fresh_until + self._max_stale, self._backoff.retry_at(key) + BACKOFF_MAX)

    def _dropped(self, key: str) -> None:
        self._backoff.forget(key)
        self.changes += 1

    def _fresh(self, key: str, entry: Entry, now: float) -> bool:
        if not entry.fresh(now):
            return False
        if entry.first_read():
            self._refresher.schedule(key, entry, now)
        return True

    def _expire(self, key: str, entry: Entry, at: float) -> None:
        """No longer fresh from `at`: the answer stays servable as stale."""
        if entry.expire(at):
            self._entries.keep(key, entry)
            self.changes += 1

    def _expire_unless_settled(self, keys: set[str] | Mapping[str, Entry], first: int, at: float) -> set[str]:
        """Expire from `at` each held key of `keys` that no fetch from ticket `first` on settled
        with an answer; return them."""
        stale = set()
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and (entry.ticket < first or self._backoff.failure(key) is not None):
                self._expire(key, entry, at)
                stale.add(key)
        return stale

    def _join(self, key: str, entry: Entry | None) -> asyncio.Future[Value]:
        """The fetch of `key` under way, or a new one; its entry is kept while it is under way."""
        fetch = self._flight.under_way(key)
        if fetch is None:
            fetch = self._flight.start(key, self._ticket())
            self._entries.keep(key, entry if entry is not None else Entry(ticket=0))
        return fetch

    async def _refresh(self, batch: dict[str, Entry]) -> None:
        ticket = self._ticket()
        try:
            found: Fetched = await self._fetch_many(list(batch))
        except UpstreamError as error:
            # AWS is failing: each entry backs off, lives on to its expiry, then serves stale.
            log.debug("batch refresh of %d entries failed: %s", len(batch), error.code)
            found = dict.fromkeys(batch, error)
        now = self._timer()
        for key, entry in batch.items():
            result = found.get(key)
            if self._entries.get(key) is not entry:
                continue  # evicted meanwhile: nobody holds it any more
            if isinstance(result, UpstreamError):
                self._metrics.refresh_failures.inc()
            if key in found:
                self._settle(key, ticket, result, now)

    def _settle(self, key: str, ticket: int, result: Value | UpstreamError, now: float | None = None) -> None:
        """Apply the outcome of the fetch that took `ticket`, unless a later one was applied."""
        entry = self._entries.get(key)
        if entry is None:
            entry = Entry(ticket)
        elif ticket < entry.ticket:
            return  # older than what the entry shows: a late answer must not undo it
        self.changes += 1
        if now is None:
            now = self._timer()
        if isinstance(result, UpstreamError):
            self._backoff.failed(key, _bare(result), now)
            entry.failed(ticket, result.transient)
        else:
            self._backoff.answered(key, ticket)
            life = self._ttl if result is not None else self._negative_ttl
            entry.answered(ticket, result, now, now + life, now + life * self._jitter(*REFRESH_AT))
        self._entries.keep(key, entry)
        if entry.known and entry.read:  # read before this failure: its refresh is retried in turn
            self._refresher.schedule(key, entry, now)

    def _servable(self, entry: Entry, now: float) -> bool:
        return entry.known and now < entry.fresh_until + self._max_stale

    def _stale_or_raise(self, key: str, error: UpstreamError) -> tuple[Value, Status]:
        stale = self._stale(key) if error.transient else None
        if stale is None:
            raise _bare(error) from None
        return stale

    def _stale(self, key: str) -> tuple[Value, Status] | None:
        """The last value, while it may still be served."""
        entry = self._entries.get(key)
        if entry is None or not self._servable(entry, self._timer()):
            return None
        return entry.value, Status.STALE


def _bare(error: UpstreamError) -> UpstreamError:
    """A copy of `error` without traceback or context, for the back-off to keep and for each request
    to raise. Raising one exception object again chains the raising frames onto its traceback: every
    request answered with a kept failure would stay in memory (its request, its connection) while
    the back-off keeps it; and the failed call's own frames hold botocore's and aiohttp's responses."""
    return UpstreamError(error.api, error.code, error.transient, error.detail)
