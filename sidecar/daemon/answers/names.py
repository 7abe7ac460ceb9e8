"""Each store's rule for the secret names of a key, as the provider backends form them.

`SecretsManagerBackend`: `<prefix><sep><key>`, an empty prefix means the bare key, and the
team-scoped name `<prefix><sep><team>--<key>` is tried before the global one.
`SystemsManagerParameterStoreBackend`: `<prefix>/<key>` with a leading "/" ensured, and team
scoping even under an empty prefix. For both, a null prefix turns a kind off and lookup patterns
are checked before any AWS call; a name the store would refuse cannot exist, so it is a miss
with no call.
"""

from __future__ import annotations

import re

from sidecar import CONFIG, SECRETSMANAGER, SSM, TEAM_SEP
from sidecar.daemon.backend_kwargs import StoreSettings

# Airflow's rule for team names (`airflow teams create`), without its 3-character minimum.
VALID_TEAM = re.compile(r"[A-Za-z0-9_-]{1,50}")


class InvalidTeam(ValueError):
    """A team name Airflow would never send."""


class SecretsManagerNames:
    valid = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")

    def __init__(self, store: StoreSettings) -> None:
        self._store = store

    def name(self, prefix: str, id_: str) -> str:
        return f"{prefix}{self._store.sep}{id_}"

    def names(self, prefix: str, key: str, ids: list[str]) -> list[str]:
        return [self.name(prefix, id_) for id_ in ids] if prefix else [key]  # a bare key has no team form


class ParameterStoreNames:
    # A `:version` or `:label` selector is Parameter Store's own way to pin a value.
    valid = re.compile(r"/[A-Za-z0-9/_.-]{1,1010}(:[A-Za-z0-9_.-]{1,100})?")

    def __init__(self, store: StoreSettings) -> None:
        self._store = store

    def name(self, prefix: str, id_: str) -> str:
        name = f"{prefix}/{id_}"
        return name if name.startswith("/") else "/" + name

    def names(self, prefix: str, key: str, ids: list[str]) -> list[str]:
        return [self.name(prefix, id_) for id_ in ids]


NAMING: dict[str, type[SecretsManagerNames] | type[ParameterStoreNames]] = {
    SECRETSMANAGER: SecretsManagerNames,
    SSM: ParameterStoreNames,
}


class Names:
    """The secret names to try for a key, in order, under the configured store's rule."""

    def __init__(self, store: StoreSettings) -> None:
        self._store = store
        self._rule = NAMING[store.source](store)

    def of(self, kind: str, key: str, team: str | None) -> tuple[str, ...]:
        """Empty when no name may be looked up for `key`; raises InvalidTeam for a bad team name."""
        if team is not None and not VALID_TEAM.fullmatch(team):
            raise InvalidTeam("a team name is 1-50 characters of A-Z, a-z, 0-9, _ and -")
        rule = self._store.kinds[kind]
        if rule.prefix is None or not rule.admits(key) or not _safe_key(key):
            return ()
        ids = [key]
        if team and kind != CONFIG:  # config options are never team-scoped
            ids.insert(0, f"{team}{TEAM_SEP}{key}")
        valid = self._rule.valid
        return tuple(name for name in self._rule.names(rule.prefix, key, ids) if valid.fullmatch(name))

    def listed_prefixes(self) -> list[str]:
        """The name prefixes a listing can be authoritative for (an empty prefix is not one)."""
        return sorted({self._rule.name(rule.prefix, "") for rule in self._store.kinds.values() if rule.prefix})


def _safe_key(key: str) -> bool:
    """Not empty, no leading "/", no `..` path segment: a key names one secret below its prefix."""
    return bool(key) and not key.startswith("/") and ".." not in key.split("/")
