"""The names under the configured prefixes, from periodic listings: a feed of what changed.

Each listing is compared with the one before: a name that appeared, disappeared or whose version
moved (a rotation, a staging label moved back) has changed, and the daemon fetches the ones it
holds again at once. A listing is not proof that a name does not exist: ListSecrets is
eventually consistent ("might not reflect changes from the last five minutes"), so a miss is
always asked of AWS by name, and a name the last listing lacked only serves as a stale miss
while AWS fails. If listing is denied, the daemon logs it once and looks up every key on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import Source, UpstreamError

log = logging.getLogger(__name__)


class Catalog:
    def __init__(
        self,
        source: Source,
        prefixes: list[str],
        *,
        max_stale: float,
        metrics: Metrics,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._prefixes = tuple(prefixes)  # each ends with the separator
        self._max_stale = max_stale
        self._metrics = metrics
        self._timer = timer
        self.versions: dict[str, str | None] = {}  # the last good listing's, by name
        self._listed_at: float | None = None
        self._denied = False

    def absent_since(self, name: str) -> float | None:
        """When the last good listing was taken, if it covers `name` and lacks it and is young
        enough to answer as a stale miss while AWS fails; else None."""
        if self._listed_at is None or name in self.versions:
            return None
        if self._timer() - self._listed_at > self._max_stale:
            return None
        name = name.partition(":")[0]  # a Parameter Store `name:version` exists if `name` does
        if name in self.versions or not name.startswith(self._prefixes):
            return None
        return self._listed_at

    async def refresh(self) -> tuple[set[str], dict[str, str]]:
        """List every prefix; return the names that changed since the last listing and whose new
        state the listing does not carry, and the values it carries (Parameter Store's), which
        the catalog does not keep.

        Raises UpstreamError, and keeps the last listing, if that fails.
        """
        try:
            listing = await self._source.list_secrets(list(self._prefixes))
        except UpstreamError as error:
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
            log.info("%s works again: changes are seen at each listing", self._source.list_permission)
            self._denied = False
        before, after, first = self.versions, listing.versions, self._listed_at is None
        changed = {name for name in before.keys() | after.keys() if before.get(name, ()) != after.get(name, ())}
        self.versions, self._listed_at = after, self._timer()
        self._metrics.last_listing.set_to_current_time()
        log.info("listed %d secrets under %d prefixes, %d changed", len(after), len(self._prefixes), len(changed))
        if first:
            return set(), listing.values  # the warm-up loads what it lists
        return {name for name in changed if name not in listing.values}, listing.values
