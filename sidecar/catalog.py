"""The names that exist under the configured prefixes, from periodic listings.

While a listing is fresh it is authoritative: a name under a listed prefix that the listing
lacks does not exist, and is answered as a miss with no AWS call. A secret created later is
seen at the next listing. While listing fails transiently (AWS throttling or down), the last
good listing stays authoritative for up to `max_stale`, its misses answered as stale. If
listing is denied, nothing is authoritative once the last listing is old, and every lookup goes
to the cache and AWS as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sidecar.cache import Status
from sidecar.metrics import Metrics
from sidecar.sources import Source, UpstreamError

log = logging.getLogger(__name__)


class Catalog:
    def __init__(
        self,
        source: Source,
        prefixes: list[str],
        *,
        interval: float,
        max_stale: float,
        metrics: Metrics,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._prefixes = prefixes  # each ends with the separator
        # One missed listing is tolerated before the catalog stops being authoritative.
        self._max_age = 2 * interval
        self._max_stale = max_stale
        self._metrics = metrics
        self._timer = timer
        self._names: frozenset[str] = frozenset()
        self._listed_at: float | None = None
        self._denied = False
        self._failing = False  # the last listing failed transiently
        # Bumped by every listing, good or failed: an answer built from `absent` holds while it is
        # unchanged, and until `authoritative_until` if a name was absent.
        self.changes = 0

    @property
    def authoritative_until(self) -> float:
        """Until when, on `timer`, a name the last listing lacks is answered as absent (HIT)."""
        return self._listed_at + self._max_age if self._listed_at is not None else float("-inf")

    def absent(self, name: str) -> Status | None:
        """HIT when a fresh listing covers `name` and lacks it, STALE when only an old one does
        while AWS fails; None when no listing can tell."""
        if self._listed_at is None or name in self._names:  # the common case first: a listed name
            return None
        age = self._timer() - self._listed_at
        if age <= self._max_age:
            status = Status.HIT
        elif self._failing and age <= self._max_age + self._max_stale:
            status = Status.STALE
        else:
            return None
        name = name.partition(":")[0]  # a Parameter Store `name:version` exists if `name` does
        if name in self._names or not any(name.startswith(prefix) for prefix in self._prefixes):
            return None
        self._metrics.lookups.counts["listed_absent" if status is Status.HIT else "stale"] += 1
        return status

    async def refresh(self) -> dict[str, str | None]:
        """List every prefix: names, with values where the listing carries them.

        Raises UpstreamError, and keeps the last listing, if that fails.
        """
        names: dict[str, str | None] = {}
        try:
            for prefix in self._prefixes:
                names.update(await self._source.list_names(prefix))
        except UpstreamError as error:
            self.changes += 1
            self._failing = error.transient
            if not error.transient and not self._denied:
                self._denied = True
                log.warning(
                    "%s was refused (%s): looking up each key on demand instead. Allow the %s "
                    "permission on the sidecar's role to cut AWS calls.",
                    self._source.list_permission,
                    error.code,
                    self._source.list_permission,
                )
            raise
        if self._denied:
            log.info("%s works again: absent names are answered from the listing", self._source.list_permission)
            self._denied = False
        self._names = frozenset(names)
        self._listed_at = self._timer()
        self._failing = False
        self.changes += 1
        self._metrics.last_listing.set_to_current_time()
        log.info("listed %d secrets under %d prefixes", len(names), len(self._prefixes))
        return names
