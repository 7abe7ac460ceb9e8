"""One entry per key: the outcome of the key's latest settled fetch (its `ticket`), its deadlines,
and what the resolver built from its value. Every change to an entry is a method here; the cache
re-times the entry in its store after each one (`store.Entries.keep`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar import X_CACHE_HIT, X_CACHE_MISS, X_CACHE_STALE

# What a fetch gives: the secret's string, or None when there is no such secret.
Value = str | None


class Status(str, enum.Enum):
    """Where an answer came from, as the `X-Cache` header says it."""

    HIT = X_CACHE_HIT
    MISS = X_CACHE_MISS
    STALE = X_CACHE_STALE


@dataclass(eq=False, slots=True)  # slots: a fleet's daemon holds thousands of these
class Entry:
    """Everything the cache knows of one key's answer. Its failures are the back-off's
    (`backoff.BackOff`), its fetch under way the single flight's (`flight.SingleFlight`)."""

    ticket: int  # of the fetch whose outcome this entry shows; 0: none has settled yet
    known: bool = False  # holds an answer (`value`, None for a miss) that may be served
    value: Value = None
    fetched_at: float = 0.0
    fresh_until: float = 0.0
    refresh_at: float = 0.0
    read: bool = False  # read since it was fetched: worth refreshing ahead of expiry
    answers: dict[str, Any] | None = None  # built from `value` by the resolver, by kind

    def answered(self, ticket: int, value: Value, now: float, fresh_until: float, refresh_at: float) -> None:
        """Hold `value` until `fresh_until` (no later than `now`: not at all)."""
        self.ticket = ticket
        self.known = fresh_until > now
        self.value = value if self.known else None
        self.answers = None
        self.fetched_at = now
        self.fresh_until = fresh_until
        self.refresh_at = refresh_at
        self.read = False

    def failed(self, ticket: int, transient: bool) -> None:
        """The fetch that took `ticket` failed: a transient failure keeps the answer, to serve
        stale; any other (AccessDenied, a deletion) forgets it, since it may no longer be read."""
        self.ticket = ticket
        if not transient:
            self.forget()

    def forget(self) -> None:
        """Serve nothing more: what AWS refused, or what left the store, leaves memory too."""
        self.known, self.value, self.answers, self.fresh_until = False, None, None, 0.0

    def expire(self, at: float) -> bool:
        """No longer fresh from `at` (the answer stays servable as stale); whether that moved it."""
        if self.fresh_until <= at:
            return False
        self.fresh_until = at
        return True

    def fresh(self, now: float) -> bool:
        return self.known and now < self.fresh_until

    def first_read(self) -> bool:
        """Mark it read; whether this is its first read since it was fetched."""
        if self.read:
            return False
        self.read = True
        return True

    def built(self, kind: str, build: Callable[[str, Any], Any]) -> Any:
        """What `build(kind, value)` makes of the value: made once per kind, kept until the value
        changes or leaves memory."""
        answers = self.answers
        if answers is None:
            answers = self.answers = {}
        built = answers.get(kind)
        if built is None:
            built = answers[kind] = build(kind, self.value)
        return built
