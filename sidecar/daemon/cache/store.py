"""The entries by key, in one least-recently-used order, each kept until its expiry.

An entry's expiry comes from the cache (`expiry`): until then it may be served stale, its
back-off matters, or it is being fetched. Past it the entry reads as absent and leaves at that
read, at the next `keep` of it, or at the next sweep (once a minute at most, on a `keep`): the
store holds no per-key timer, one small item per key fewer than a time-ordered heap. An entry
that leaves forgets its answer, and the cache hears of it (`on_drop`).
"""

from __future__ import annotations

from collections.abc import Callable

from cachetools import Cache, LRUCache

from sidecar.daemon.cache.entry import Entry

SWEEP_EVERY = 60.0  # seconds between sweeps of the expired entries


class Entries(LRUCache):  # type: ignore[type-arg]
    def __init__(
        self,
        max_entries: int,
        expiry: Callable[[str, Entry], float],
        timer: Callable[[], float],
        on_drop: Callable[[str], None],
    ) -> None:
        super().__init__(maxsize=max_entries)
        self._expiry = expiry
        self._timer = timer
        self._on_drop = on_drop
        self._sweep_at = timer() + SWEEP_EVERY

    def get(self, key: str, default: None = None) -> Entry | None:  # type: ignore[override]
        """The entry of `key` unless it has expired; marks it most recently used."""
        entry: Entry | None = super().get(key)
        if entry is not None and self._timer() >= self._expiry(key, entry):
            self._drop(key, entry)
            return None
        return entry

    def keep(self, key: str, entry: Entry) -> None:
        """Store `entry`, or keep it after a change: unless that change expired it."""
        now = self._timer()
        if now >= self._sweep_at:
            self._sweep(now)
        if now < self._expiry(key, entry):
            self[key] = entry
        else:
            self.pop(key, None)
            entry.forget()
            self._on_drop(key)

    def popitem(self) -> tuple[str, Entry]:
        key, entry = super().popitem()  # the least recently used, to make room
        entry.forget()
        self._on_drop(key)
        return key, entry

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + SWEEP_EVERY
        # Read past the LRU order (cachetools' plain lookup): a sweep is not a use.
        expired = [key for key in self if now >= self._expiry(key, Cache.__getitem__(self, key))]
        for key in expired:
            self._drop(key, Cache.__getitem__(self, key))

    def _drop(self, key: str, entry: Entry) -> None:
        del self[key]
        entry.forget()
        self._on_drop(key)
