"""The answer Airflow gets for a variable, connection or config key: the first of its secret
names the cache holds a value for, connections normalised as the provider does for Secrets
Manager (Parameter Store's are served as stored).

`peek` answers from fresh entries alone, with nothing to await, or says it cannot; `get` answers
whatever it takes. The answer (the value as Airflow gets it and its encoded body) is built once
and kept on the cache entry it came from, so it leaves memory with that entry. Every lookup of a
name is counted here, in `sidecar_cache_lookups`, by what the cache gave.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sidecar import CONNECTIONS, SECRETSMANAGER
from sidecar.daemon.answers.connections import normalise
from sidecar.daemon.answers.names import Names
from sidecar.daemon.backend_kwargs import CONN_WORDS, StoreSettings
from sidecar.daemon.cache.cache import Cache
from sidecar.daemon.cache.entry import Entry, Status, Value
from sidecar.daemon.catalog.listing import Catalog

_SEVERITY = {Status.HIT: 0, Status.MISS: 1, Status.STALE: 2}
MEMO_MAX = 10000  # keys remembered; all dropped at once past it


def _counted(value: Value, status: Status) -> str:
    """A name's lookup as `sidecar_cache_lookups` counts it."""
    if status is Status.HIT:
        return "hit" if value is not None else "negative_hit"
    return "miss" if status is Status.MISS else "stale"


@dataclass(frozen=True, slots=True)
class Answer:
    """What Airflow gets: `value` (None: not found, after trying `names`) and its JSON body."""

    value: str | None
    body: bytes = b""
    names: tuple[str, ...] = ()


Resolved = tuple[Answer, Status]


@dataclass(eq=False, slots=True)
class _Memo:
    """What the resolver knows of one (kind, key, team): the names to try, and the entry that gave
    the last answer from fresh entries alone (None: none of the names is found), which holds while
    the cache has not changed since (`changes`) and until the earliest deadline it was built from."""

    names: tuple[str, ...]
    missing: Answer
    entry: Entry | None = None
    counted: tuple[str, ...] = ()  # what giving that answer counts in sidecar_cache_lookups
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
        self._memos: dict[tuple[str, str, str | None], _Memo] = {}

    def peek(self, kind: str, key: str, team: str | None = None) -> Resolved | None:
        """The answer for `key` from fresh entries alone, or None when only `get` can give it (a
        fetch, a back-off or a stale answer is involved). Raises InvalidTeam, InvalidSecret."""
        memo = self._memos.get((kind, key, team)) or self._memo(kind, key, team)
        if not ((memo.changes == self._cache.changes and self._timer() < memo.until) or self._peeked(kind, memo)):
            return None
        counts = self._counts
        for counted in memo.counted:
            counts[counted] += 1
        entry = memo.entry
        return (memo.missing if entry is None else entry.built(kind, self._build)), Status.HIT

    async def get(self, kind: str, key: str, team: str | None = None, refresh: bool = False) -> Resolved:
        """The answer for `key` and the cache's status, asking AWS where it must. Raises
        InvalidTeam, InvalidSecret, UpstreamError."""
        if not refresh:
            peeked = self.peek(kind, key, team)
            if peeked is not None:
                return peeked
        memo = self._memos.get((kind, key, team)) or self._memo(kind, key, team)
        status = Status.HIT
        catalog = self._catalog
        for name in memo.names:
            absent_since = catalog.absent_since(name) if catalog is not None else None
            value, got = await self._cache.get(name, refresh=refresh, absent_since=absent_since)
            self._counts[_counted(value, got)] += 1
            status = max(status, got, key=_SEVERITY.__getitem__)
            if value is not None:
                return self._build(kind, value), status  # kept on the entry at its next hit
        return memo.missing, status

    def _memo(self, kind: str, key: str, team: str | None) -> _Memo:
        """Worked out once per key: a cache hit spends no time on patterns and formatting."""
        names = self._names.of(kind, key, team)
        memo = _Memo(names, Answer(None, names=names))
        if len(self._memos) >= MEMO_MAX:
            self._memos.clear()
        self._memos[kind, key, team] = memo
        return memo

    def _peeked(self, kind: str, memo: _Memo) -> bool:
        """Memoise in `memo` the answer fresh entries give, if they give one."""
        counted: list[str] = []
        until = float("inf")
        found = None
        for name in memo.names:
            entry = self._cache.peek(name)
            if entry is None:
                return False
            counted.append(_counted(entry.value, Status.HIT))
            until = min(until, entry.fresh_until)
            if entry.value is not None:
                found = entry
                break
        memo.entry, memo.counted, memo.changes, memo.until = found, tuple(counted), self._cache.changes, until
        return True

    def _build(self, kind: str, value: str) -> Answer:
        if kind == CONNECTIONS and self._normalises:
            value = normalise(value, self._conn_words)
        return Answer(value, json.dumps({"value": value}).encode())
