"""The answer Airflow gets for a variable, connection or config key: the first of its secret
names the cache holds a value for, connections normalised as the provider does for Secrets
Manager (Parameter Store's are served as stored).

A lookup the cache can answer from fresh entries alone is answered with nothing to await; the
answer (the value as Airflow gets it and its encoded body) is built once and kept on the cache
entry it came from, so it leaves memory with that entry.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar import CONNECTIONS, SECRETSMANAGER
from sidecar.daemon.backend_kwargs import CONN_WORDS, StoreSettings
from sidecar.daemon.cache import NOT_CACHED, Cache, Entry, Status
from sidecar.daemon.catalog.listing import Catalog
from sidecar.daemon.lookup.connections import normalise
from sidecar.daemon.lookup.names import Names

_SEVERITY = {Status.HIT: 0, Status.MISS: 1, Status.STALE: 2}
MEMO_MAX = 10000  # keys remembered; all dropped at once past it


@dataclass(frozen=True, slots=True)
class Answer:
    """What Airflow gets: `value` (None: not found, after trying `names`) and its JSON body."""

    value: str | None
    body: bytes = b""
    names: tuple[str, ...] = ()


Resolved = tuple[Answer, Status]


@dataclass(eq=False, slots=True)
class _Lookup:
    """What the resolver knows of one (kind, key, team): the names to try, and the entry that gave
    the last answer from the cache alone (None: none of the names is found), which holds while the
    cache has not changed since (`changes`) and until the earliest deadline it was built from."""

    names: tuple[str, ...]
    missing: Answer
    entry: Entry | None = None
    results: tuple[str, ...] = ()  # what giving that answer counts in sidecar_cache_lookups
    changes: int = -1
    until: float = float("-inf")


class Resolver:
    def __init__(
        self,
        store: StoreSettings,
        cache: Cache,
        catalog: Catalog | None,
        *,
        timer: Callable[[], float],
        counts: dict[str, int],
    ) -> None:
        self._names = Names(store)
        self._cache = cache
        self._catalog = catalog
        self._timer = timer
        self._counts = counts
        self._normalises = store.source == SECRETSMANAGER
        self._conn_words = {field: words + store.extra_conn_words.get(field, ()) for field, words in CONN_WORDS.items()}
        self._lookups: dict[tuple[str, str, str | None], _Lookup] = {}

    def resolve(
        self, kind: str, key: str, team: str | None = None, refresh: bool = False
    ) -> Resolved | Awaitable[Resolved]:
        """The answer for `key` and the cache's status; when the cache alone cannot give it (a
        fetch, a back-off or a stale answer is involved), an awaitable of them. Raises InvalidTeam,
        InvalidSecret, UpstreamError."""
        lookup = self._lookups.get((kind, key, team)) or self._lookup(kind, key, team)
        if refresh or not (
            (lookup.changes == self._cache.changes and self._timer() < lookup.until) or self._peeked(kind, lookup)
        ):
            return self._fetched(kind, lookup, refresh)
        for result in lookup.results:  # counted as if the cache were asked
            self._counts[result] += 1
        entry = lookup.entry
        return (lookup.missing if entry is None else entry.answers[kind]), Status.HIT  # type: ignore[index]

    def _lookup(self, kind: str, key: str, team: str | None) -> _Lookup:
        """Worked out once per key: a cache hit spends no time on patterns and formatting."""
        names = self._names.of(kind, key, team)
        lookup = _Lookup(names, Answer(None, names=names))
        if len(self._lookups) >= MEMO_MAX:
            self._lookups.clear()
        self._lookups[kind, key, team] = lookup
        return lookup

    def _peeked(self, kind: str, lookup: _Lookup) -> bool:
        """Memoise in `lookup` the answer fresh entries give, if they give one."""
        results: list[str] = []
        until = float("inf")
        found = None
        for name in lookup.names:
            entry = self._cache.peek(name)
            if entry is NOT_CACHED:
                return False
            results.append("hit" if entry.value is not None else "negative_hit")
            until = min(until, entry.fresh_until)
            if entry.value is not None:
                self._keep_answer(kind, entry)
                found = entry
                break
        lookup.entry, lookup.results, lookup.changes, lookup.until = found, tuple(results), self._cache.changes, until
        return True

    async def _fetched(self, kind: str, lookup: _Lookup, refresh: bool) -> Resolved:
        status = Status.HIT
        catalog = self._catalog
        for name in lookup.names:
            absent_since = catalog.lacks(name) if catalog is not None else None
            value, got = await self._cache.get(name, refresh=refresh, absent_since=absent_since)
            status = max(status, got, key=_SEVERITY.__getitem__)
            if value is not None:
                return self._build(kind, value), status  # kept on the entry at its next hit
        return lookup.missing, status

    def _keep_answer(self, kind: str, entry: Entry) -> None:
        """Build the answer `entry` gives as `kind` once, and keep it on the entry."""
        answers = entry.answers
        if answers is None:
            answers = entry.answers = {}
        if kind not in answers:
            answers[kind] = self._build(kind, entry.value)  # type: ignore[arg-type]

    def _build(self, kind: str, value: str) -> Answer:
        if kind == CONNECTIONS and self._normalises:
            value = normalise(value, self._conn_words)
        return Answer(value, json.dumps({"value": value}).encode())
