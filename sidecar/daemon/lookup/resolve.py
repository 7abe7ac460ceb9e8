"""Airflow's semantics: which secret names a variable, connection or config key maps to.

It mirrors the provider backends. `SecretsManagerBackend`: `<prefix><sep><key>`, an empty
prefix means the bare key, the team-scoped name `<prefix><sep><team>--<key>` is tried before
the global one, and JSON connection secrets are normalised with the provider's alias words.
`SystemsManagerParameterStoreBackend`: `<prefix>/<key>` with a leading "/" ensured, team
scoping even under an empty prefix, values served as stored. For both, a null prefix turns a
kind off and lookup patterns are checked before any AWS call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sidecar.daemon.cache import NOT_CACHED, Cache, Status
from sidecar.daemon.catalog import Catalog
from sidecar.daemon.settings import StoreSettings
from sidecar.protocol import TEAM_SEP

# Each store's rule for names; anything else cannot exist, so it is a miss with no call.
VALID_NAME = {
    "secretsmanager": re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}"),
    # A `:version` or `:label` selector is Parameter Store's own way to pin a value.
    "ssm": re.compile(r"/[A-Za-z0-9/_.-]{1,1010}(:[A-Za-z0-9_.-]{1,100})?"),
}
# Airflow's rule for team names (`airflow teams create`), without its 3-character minimum.
VALID_TEAM = re.compile(r"[A-Za-z0-9_-]{1,50}")

# The provider's alias words for each connection field, in its order.
CONN_WORDS: dict[str, tuple[str, ...]] = {
    "login": ("login", "user", "username", "user_name"),
    "password": ("password", "pass", "key"),
    "host": ("host", "remote_host", "server"),
    "port": ("port",),
    "schema": ("database", "schema"),
    "conn_type": ("conn_type", "conn_id", "connection_type", "engine"),
    "extra": ("extra",),
}

_SEVERITY = {Status.HIT: 0, Status.MISS: 1, Status.STALE: 2}
MEMO_MAX = 10000  # keys and normalised connections remembered; all dropped at once past it


class InvalidSecret(Exception):
    """A stored secret cannot be served as what Airflow asked for (never holds the value)."""


class InvalidTeam(ValueError):
    """A team name Airflow would never send."""


@dataclass(eq=False, slots=True)
class _Lookup:
    """What the resolver knows of one (kind, key, team): the names to try, and the last answer
    built from the cache alone, which holds while it has not changed since (`changes`) and until
    the earliest deadline of what it was built from (`until`)."""

    names: tuple[str, ...]
    answer: str | None = None
    results: tuple[str, ...] = ()  # what giving that answer counts in sidecar_cache_lookups
    changes: int = -1
    until: float = float("-inf")


class Resolver:
    def __init__(self, store: StoreSettings, cache: Cache, catalog: Catalog | None = None) -> None:
        self._store = store
        self._cache = cache
        self._catalog = catalog
        self._timer = cache.timer
        self._counts = cache.lookups
        self._connections: dict[str, str] = {}  # stored connection value -> normalised
        self._lookups: dict[tuple[str, str, str | None], _Lookup] = {}
        self._conn_words = {field: words + store.extra_conn_words.get(field, ()) for field, words in CONN_WORDS.items()}

    def names(self, kind: str, key: str, team: str | None = None) -> tuple[str, ...]:
        """The secret names to try for `key`, in order; empty when none may be looked up."""
        return self._lookup(kind, key, team).names

    def _lookup(self, kind: str, key: str, team: str | None) -> _Lookup:
        """Worked out once per key: a cache hit spends no time on patterns and formatting."""
        lookup = self._lookups.get((kind, key, team))
        if lookup is None:
            lookup = _Lookup(self._names_for(kind, key, team))
            if len(self._lookups) >= MEMO_MAX:
                self._lookups.clear()
            self._lookups[kind, key, team] = lookup
        return lookup

    def _names_for(self, kind: str, key: str, team: str | None) -> tuple[str, ...]:
        if team is not None and not VALID_TEAM.fullmatch(team):
            raise InvalidTeam("a team name is 1-50 characters of A-Z, a-z, 0-9, _ and -")
        store = self._store
        rule = store.kinds[kind]
        if rule.prefix is None or not rule.admits(key) or not _safe_key(key):
            return ()
        ids = [key]
        if team and kind != "config":  # config options are never team-scoped
            ids.insert(0, f"{team}{TEAM_SEP}{key}")
        if store.source == "ssm":
            names = [_parameter_name(rule.prefix, id_) for id_ in ids]
        elif rule.prefix:
            names = [f"{rule.prefix}{store.sep}{id_}" for id_ in ids]
        else:
            names = [key]  # a bare key has no team-scoped form
        valid = VALID_NAME[store.source]
        return tuple(name for name in names if valid.fullmatch(name))

    def resolve_cached(self, kind: str, key: str, team: str | None = None) -> tuple[str | None, Status] | None:
        """`resolve` from the cache alone, with nothing to await; None when only
        `resolve` can answer (a fetch, a back-off or a stale answer is involved)."""
        lookup = self._lookups.get((kind, key, team)) or self._lookup(kind, key, team)
        changes = self._cache.changes
        if lookup.changes == changes and self._timer() < lookup.until:
            for result in lookup.results:  # counted as if the cache were asked
                self._counts[result] += 1
            return lookup.answer, Status.HIT
        return self._answer_cached(kind, lookup, changes)

    def _answer_cached(self, kind: str, lookup: _Lookup, changes: int) -> tuple[str | None, Status] | None:
        """The answer from peeking at the cache, memoised in `lookup` (`changes`: the cache's change
        counter, which only grows)."""
        results: list[str] = []
        until = float("inf")
        answer = None
        for name in lookup.names:
            peeked = self._cache.peek(name)
            if peeked is NOT_CACHED:
                return None
            value, fresh_until = peeked
            results.append("hit" if value is not None else "negative_hit")
            until = min(until, fresh_until)
            if value is not None:
                answer = self._normalised(value) if kind == "connections" else value
                break
        for result in results:  # counted once the whole answer came from the cache
            self._counts[result] += 1
        lookup.answer, lookup.results, lookup.changes, lookup.until = answer, tuple(results), changes, until
        return answer, Status.HIT

    async def resolve(
        self, kind: str, key: str, team: str | None = None, refresh: bool = False
    ) -> tuple[str | None, Status]:
        """The value Airflow should get for `key` (None: not found) and the cache's status."""
        status = Status.HIT
        catalog = self._catalog
        for name in self.names(kind, key, team):
            absent_since = catalog.lacks(name) if catalog is not None else None
            value, got = await self._cache.get(name, refresh=refresh, absent_since=absent_since)
            status = max(status, got, key=_SEVERITY.__getitem__)
            if value is not None:
                return (self._normalised(value) if kind == "connections" else value), status
        return None, status

    def _normalised(self, value: str) -> str:
        """A connection as Airflow gets it, built once per stored value (a str caches its hash)."""
        if self._store.source != "secretsmanager":
            return value
        normalised = self._connections.get(value)
        if normalised is None:
            if len(self._connections) >= MEMO_MAX:
                self._connections.clear()
            normalised = self._connections[value] = self._normalise_connection(value)
        return normalised

    def _normalise_connection(self, value: str) -> str:
        """JSON connections get the provider's field aliases; URIs pass through untouched."""
        if not value.strip().startswith("{"):
            return value
        try:
            secret: Any = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidSecret("the connection secret starts with '{' but is not valid JSON") from None
        standard = {
            field: next((v for k, v in secret.items() if k in words), None) for field, words in self._conn_words.items()
        }
        return json.dumps(standard)


def _parameter_name(prefix: str, id_: str) -> str:
    """The provider's Parameter Store name: `<prefix>/<id>`, with a leading "/" ensured."""
    name = f"{prefix}/{id_}"
    return name if name.startswith("/") else "/" + name


def listed_prefixes(store: StoreSettings) -> list[str]:
    """The name prefixes a listing can be authoritative for (an empty prefix is not one)."""
    prefixes = {
        _parameter_name(rule.prefix, "") if store.source == "ssm" else f"{rule.prefix}{store.sep}"
        for rule in store.kinds.values()
        if rule.prefix
    }
    return sorted(prefixes)


def _safe_key(key: str) -> bool:
    """Not empty, no leading "/", no `..` path segment: a key names one secret below its prefix."""
    return bool(key) and not key.startswith("/") and ".." not in key.split("/")
