"""Refresh-ahead: entries read during their life are fetched again at about 80% of it.

A heap ordered by due time holds (due time, ticket, key) for each entry read since its fetch: a
pass costs nothing for the entries that are not due, an entry nobody reads costs no item, and an
item whose entry moved on (a later ticket) is skipped.
"""

from __future__ import annotations

import heapq

from sidecar.daemon.cache.backoff import BackOff
from sidecar.daemon.cache.entry import Entry
from sidecar.daemon.cache.flight import SingleFlight
from sidecar.daemon.cache.store import Entries

REFRESH_AT = (0.75, 0.85)  # refresh-ahead point, as a jittered fraction of the TTL
# Once something is due, whatever comes due within this fraction of its own lifetime (TTL, or
# negative TTL for a miss) joins its batch: fewer, fuller batch calls instead of one small one per
# tick, without refreshing a short-lived miss many times a TTL.
COALESCE = 0.1


class Refresher:
    def __init__(
        self, entries: Entries, backoff: BackOff, flight: SingleFlight, ttl: float, negative_ttl: float
    ) -> None:
        self._entries = entries
        self._backoff = backoff
        self._flight = flight
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._due: list[tuple[float, int, str]] = []

    def schedule(self, key: str, entry: Entry, now: float) -> None:
        """Queue a read entry at its due time (refresh point or retry time), or now if that passed."""
        heapq.heappush(self._due, (max(now, entry.refresh_at, self._backoff.retry_at(key)), entry.ticket, key))

    def any_due(self, now: float) -> bool:
        return bool(self._due) and self._due[0][0] <= now

    def take_due(self, now: float, until: float | None = None) -> dict[str, Entry]:
        """The read entries to refresh now, off the heap: those due, with those coming due within
        COALESCE of their lifetime, or with every one due by `until` if given."""
        due = self._due
        horizon = now + max(self._ttl, self._negative_ttl) * COALESCE if until is None else until
        batch: dict[str, Entry] = {}
        later: list[tuple[float, int, str]] = []
        while due and due[0][0] <= horizon:
            item = heapq.heappop(due)
            when, ticket, key = item
            entry = self._entries.get(key)
            if entry is None or entry.ticket != ticket or self._flight.under_way(key) or key in batch:
                continue  # gone, superseded, or being fetched: a newer item stands for it
            life = self._ttl if entry.value is not None else self._negative_ttl
            soon = now + life * COALESCE if until is None else until
            if self._backoff.retry_at(key) > now or (when > now and when > soon):
                later.append(item)  # backing off, or not due yet
            else:
                batch[key] = entry
        for item in later:
            heapq.heappush(due, item)
        return batch
