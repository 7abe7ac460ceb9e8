"""Back-off after a failed fetch: per key, capped and doubling; and the outage it may be part of.

A key whose fetch failed answers at once (stale, or the failure) until its retry time instead of
calling AWS again. A transient failure opens an outage, logged once however many keys it hits;
the first answer after it ends every back-off that began before. The failures are kept here,
one record per failing key, until the key is answered or leaves the cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sidecar.daemon.sources.base import UpstreamError

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0  # seconds
BACKOFF_MAX = 60.0


@dataclass(eq=False, slots=True)
class Failure:
    error: UpstreamError  # the last one, bare (no traceback): each request raises a copy
    count: int  # failures in a row
    retry_at: float


class BackOff:
    def __init__(self, max_stale: float) -> None:
        self._max_stale = max_stale
        self._failing: dict[str, Failure] = {}
        self._outage: UpstreamError | None = None
        self._recovered = 0  # the ticket of the first answer after an outage

    def failure(self, key: str) -> UpstreamError | None:
        """The last failure of `key`'s fetch, if it has not been answered since."""
        failure = self._failing.get(key)
        return None if failure is None else failure.error

    def retry_at(self, key: str) -> float:
        failure = self._failing.get(key)
        return 0.0 if failure is None else failure.retry_at

    def waits(self, key: str, ticket: int, now: float) -> UpstreamError | None:
        """The failure to answer with, while `key` (its entry showing `ticket`) backs off: do not ask AWS."""
        failure = self._failing.get(key)
        if failure is None or now >= failure.retry_at:
            return None
        if failure.error.transient and ticket < self._recovered:
            return None  # it failed in an outage that has ended
        return failure.error

    def failed(self, key: str, error: UpstreamError, now: float) -> None:
        failure = self._failing.get(key)
        count = 1 if failure is None else failure.count + 1
        self._failing[key] = Failure(error, count, now + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (count - 1)))
        if not error.transient:
            if count == 1:  # once per refused key, not once per request during its back-off
                log.warning("fetch of %s refused: %s (%s). AWS said: %s", key, error, error.hint, error.detail)
        elif self._outage is None:  # once per outage, however many keys it hits
            self._outage = error
            log.warning(
                "AWS failed (%s): serving cached answers for up to %.0fs past their TTL, retrying each key "
                "with back-off until it recovers",
                error.code,
                self._max_stale,
            )

    def answered(self, key: str, ticket: int) -> None:
        self._failing.pop(key, None)
        if self._outage is not None:
            log.warning("AWS answers again after %s; fresh answers resume", self._outage.code)
            self._outage = None
            self._recovered = ticket

    def forget(self, key: str) -> None:
        """`key` left the cache: its record goes with it."""
        self._failing.pop(key, None)
