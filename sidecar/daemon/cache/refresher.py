"""Refresh-ahead: entries read during their life are fetched again at about 80% of it.

A heap ordered by due time holds (due time, generation, key): a pass costs nothing for the
entries that are not due, and an item whose entry moved on (a newer generation) is skipped.
"""

from __future__ import annotations

import heapq

from sidecar.daemon.cache.entry import Entries, Entry

REFRESH_AT = (0.75, 0.85)  # refresh-ahead point, as a jittered fraction of the TTL
# Once something is due, whatever comes due within this fraction of its own lifetime (TTL, or
# negative TTL for a miss) joins its batch: fewer, fuller batch calls instead of one small one per
# tick, without refreshing a short-lived miss many times a TTL.
COALESCE = 0.1


class Refresher:
    def __init__(self, entries: Entries, ttl: float, negative_ttl: float) -> None:
        self._entries = entries
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._due: list[tuple[float, int, str]] = []

    def schedule(self, key: str, entry: Entry) -> None:
        """Queue the entry at its due time (refresh point or retry time)."""
        heapq.heappush(self._due, (entry.due_at(), entry.generation, key))

    def mark_read(self, key: str, entry: Entry, now: float) -> None:
        entry.read = True
        if now >= entry.due_at():  # its queued refresh may have passed it by while unread
            heapq.heappush(self._due, (now, entry.generation, key))

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
            when, generation, key = item
            entry = self._entries.get(key)
            if entry is None or entry.generation != generation or entry.fetch is not None or key in batch:
                continue  # gone, superseded, or being fetched: a newer item stands for it
            life = self._ttl if entry.value is not None else self._negative_ttl
            soon = now + life * COALESCE if until is None else until
            if entry.retry_at > now or (when > now and (not entry.read or when > soon)):
                later.append(item)  # backing off, or not due yet (and may still be read)
            elif entry.read:
                batch[key] = entry
            # due but never read: it expires; a read before then queues it again
        for item in later:
            heapq.heappush(due, item)
        return batch
