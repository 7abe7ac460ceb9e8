"""Back-off after a failed fetch: per key, capped and doubling; and the outage it may be part of.

A key whose fetch failed answers at once (stale, or the failure) until its retry time instead of
calling AWS again. A transient failure opens an outage, logged once however many keys it hits;
the first answer after it ends every back-off that began before.
"""

from __future__ import annotations

import logging

from sidecar.daemon.cache.entry import Entry
from sidecar.daemon.sources.base import UpstreamError

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0  # seconds
BACKOFF_MAX = 60.0


class BackOff:
    def __init__(self, max_stale: float) -> None:
        self._max_stale = max_stale
        self._outage: UpstreamError | None = None
        self._recovered = 0  # the ticket of the first answer after an outage

    def waits(self, entry: Entry, now: float) -> bool:
        """The entry is backing off: answer from it, do not ask AWS."""
        if entry.failure is None or now >= entry.retry_at:
            return False
        return not (entry.failure.transient and entry.generation < self._recovered)

    def failed(self, key: str, entry: Entry, error: UpstreamError, now: float) -> None:
        entry.failures += 1
        entry.failure = error
        entry.retry_at = now + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (entry.failures - 1))
        if not error.transient:
            # AccessDenied and the like: never serve what we may no longer be allowed to read.
            entry.forget()
            if entry.failures == 1:  # once per refused key, not once per request during its back-off
                log.warning("fetch of %s refused: %s (%s). AWS said: %s", key, error, error.hint, error.detail)
        elif self._outage is None:  # once per outage, however many keys it hits
            self._outage = error
            log.warning(
                "AWS failed (%s): serving cached answers for up to %.0fs past their TTL, retrying each key "
                "with back-off until it recovers",
                error.code,
                self._max_stale,
            )

    def answered(self, ticket: int) -> None:
        if self._outage is not None:
            log.warning("AWS answers again after %s; fresh answers resume", self._outage.code)
            self._outage = None
            self._recovered = ticket
