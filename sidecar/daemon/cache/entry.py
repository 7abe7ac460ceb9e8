"""One entry per key, and the store that holds them in one LRU order with a time to live each.

An entry shows the outcome of one fetch (its `generation` is that fetch's ticket): the answer and
its deadlines, the failure and its back-off, and the fetch under way. What a lookup builds from
the answer (`answers`: the encoded bodies) is kept on the entry and dropped with the answer.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from sidecar import X_CACHE_HIT, X_CACHE_MISS, X_CACHE_STALE
from sidecar.daemon.sources.base import UpstreamError

Answer = str | None


class Status(str, enum.Enum):
    """Where an answer came from, as the `X-Cache` header says it."""

    HIT = X_CACHE_HIT
    MISS = X_CACHE_MISS
    STALE = X_CACHE_STALE


class _NotCached(enum.Enum):
    NOT_CACHED = "not cached"


# What `Cache.peek` returns when only `Cache.get` can tell: a fetch, a back-off or a stale answer.
NOT_CACHED = _NotCached.NOT_CACHED


@dataclass(eq=False, slots=True)  # slots: a fleet's daemon holds thousands of these
class Entry:
    """Everything the cache knows of one key."""

    generation: int  # the ticket of the fetch whose outcome this entry shows
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
    answers: dict[str, Any] | None = None  # built from `value` by the lookup, by kind

    def due_at(self) -> float:
        return max(self.refresh_at, self.retry_at)

    def answer(self, value: Answer, now: float, life: float, refresh_at: float) -> None:
        """Hold `value` for `life` seconds (0: not at all); forget any failure."""
        self.failure, self.failures, self.retry_at = None, 0, 0.0
        self.known = life > 0
        self.value = value if self.known else None
        self.answers = None
        self.fetched_at = now
        self.fresh_until = now + life
        self.refresh_at = refresh_at
        self.read = False

    def forget(self) -> None:
        """Serve nothing more: what AWS refused, or what left the store, leaves memory too."""
        self.known, self.value, self.answers, self.fresh_until = False, None, None, 0.0


class Entries(TLRUCache):  # type: ignore[type-arg]
    """The entries by key, least recently used evicted first, each kept while it may be served
    stale, its back-off matters, or a fetch is under way. The store computes an entry's expiry
    when it is stored, so every change to an entry's deadlines goes through `keep`."""

    def __init__(
        self,
        max_entries: int,
        max_stale: float,
        backoff_max: float,
        timer: Callable[[], float],
        on_drop: Callable[[], None],
    ) -> None:
        def expiry(_key: str, entry: Entry, _now: float) -> float:
            if entry.fetch is not None:
                return float("inf")
            return max(entry.fresh_until + max_stale, entry.retry_at + backoff_max)

        super().__init__(maxsize=max_entries, ttu=expiry, timer=timer)
        self._on_drop = on_drop

    def keep(self, key: str, entry: Entry) -> None:
        """Store `entry`, or re-time it after a change."""
        self[key] = entry
        if key not in self:
            self._drop(entry)  # already past its expiry: the store dropped it at once

    def expire(self, time: float | None = None) -> Iterable[tuple[str, Entry]]:
        expired = super().expire(time) if time is not None else super().expire()
        for _, entry in expired:
            self._drop(entry)
        return expired

    def popitem(self) -> tuple[str, Entry]:
        key, entry = super().popitem()
        self._drop(entry)
        return key, entry

    def _drop(self, entry: Entry) -> None:
        entry.forget()
        self._on_drop()
