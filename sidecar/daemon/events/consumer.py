"""The event consumer: long-polls the queue, and each accepted event makes the cache fetch that
secret again at once, by name; and whether events can be trusted, which sets the listing's pace.

While the queue answers and every change a listing finds was announced by an event, the listing
is only a backstop and runs every `SIDECAR_EVENTS_LIST_INTERVAL`. It goes back to
`SIDECAR_LIST_INTERVAL`, counted from the last listing, when receiving has failed for
`FALLBACK_AFTER` seconds, or when a listing finds a change no event announced (a disabled rule, a
broken subscription, a lost message), until an event is accepted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from sidecar.daemon.cache.cache import Cache
from sidecar.daemon.events.hints import ACCEPTED, Reader
from sidecar.daemon.events.queue import HEARTBEAT_EVERY, Queue
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import UpstreamError

log = logging.getLogger(__name__)

FALLBACK_AFTER = 60.0  # s of failed receives before the listing takes over again
RETRY_MAX = 30.0  # s between receives while the queue fails
LISTING_LAG = 300.0  # s: "ListSecrets might not reflect changes from the last five minutes"
RECHECKS = (1.0, 2.0)  # s: an unchanged secret is asked again after each, then left to the listing
# Event fetches in flight at once: a backlog of events (after the queue failed) neither crowds the
# lookups out of SIDECAR_MAX_UPSTREAM nor opens a connection to AWS per event.
FETCHES_AT_ONCE = 4


class Consumer:
    def __init__(
        self,
        queue: Queue,
        reader: Reader,
        cache: Cache,
        metrics: Metrics,
        *,
        timer: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._reader = reader
        self._cache = cache
        self._metrics = metrics
        self._timer = timer
        self._wall_clock = wall_clock
        self._failing_since: float | None = None
        self._answered_once = False
        self._trusted = False  # from the queue's first answer, until something says events are lost
        self._announced: dict[str, float] = {}  # name -> when an accepted event named it
        self._fetching: set[asyncio.Task[None]] = set()
        # Set at every change of trust: the listing loop wakes and works out its next listing again.
        self.trust_changed = asyncio.Event()

    def trusted(self) -> bool:
        """Whether the listing may run at the backstop's pace."""
        return self._trusted

    def listing_found(self, changed: set[str], started: float) -> None:
        """A listing that started at `started` found these names changed: any that no event
        announced distrusts events. An announcement is kept until a listing that started
        LISTING_LAG after it, which shows that change whatever ListSecrets' lag, has been seen."""
        unannounced = [name for name in changed if name not in self._announced]
        self._announced = {name: at for name, at in self._announced.items() if started < at + LISTING_LAG}
        if unannounced:
            self._metrics.unannounced_changes.inc(len(unannounced))
            if self._trusted:
                log.warning(
                    "events: a listing found %d changes no event announced; listing every "
                    "SIDECAR_LIST_INTERVAL until events arrive again",
                    len(unannounced),
                )
            self._trust(False)

    async def run(self) -> None:
        """Open the queue, then receive until cancelled; the queue is closed on the way out."""
        try:
            await self._open()
            self._answered()
            heartbeat_at = self._timer() + HEARTBEAT_EVERY
            delay = 1.0
            while True:
                try:
                    messages = await self._queue.receive()
                except UpstreamError as error:
                    self._failed(error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = 1.0
                self._answered()
                self._handle(messages)
                with contextlib.suppress(UpstreamError):
                    await self._queue.delete(messages)
                if self._timer() >= heartbeat_at:
                    heartbeat_at = self._timer() + HEARTBEAT_EVERY
                    with contextlib.suppress(UpstreamError):
                        await self._queue.heartbeat()
        finally:
            self._metrics.events_up.set(0)
            for task in self._fetching:
                task.cancel()
            await asyncio.gather(*self._fetching, return_exceptions=True)
            with contextlib.suppress(UpstreamError):
                await asyncio.shield(self._queue.close())

    async def _open(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._queue.open()
                return
            except UpstreamError as error:
                self._failed(error)
                log.warning(
                    "events: cannot set up the queue (%s: %s); retrying in %.0fs", error.code, error.hint, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _handle(self, messages: list[dict[str, Any]]) -> None:
        names: dict[str, str | None] = {}  # duplicates in one receive coalesce into one fetch
        for message in messages:
            hint = self._reader.read(message.get("Body", ""))
            self._metrics.events_received.labels(hint.outcome).inc()
            if hint.outcome == ACCEPTED:
                assert hint.name is not None
                names[hint.name] = hint.time
        if not names:
            return
        now = self._timer()
        self._announced.update(dict.fromkeys(names, now))
        self._trust(True)
        task = asyncio.ensure_future(self._fetch(names))
        self._fetching.add(task)
        task.add_done_callback(self._fetching.discard)

    async def _fetch(self, names: dict[str, str | None]) -> None:
        """Fetch the named secrets again; one that comes back unchanged is asked again after each
        of RECHECKS (an event may arrive before GetSecretValue shows its version), then left to
        the listing."""
        pending = set(names)
        for attempt, delay in enumerate((0.0, *RECHECKS)):
            await asyncio.sleep(delay)
            try:
                outcomes = {}
                for chunk in _chunks(sorted(pending), FETCHES_AT_ONCE):
                    outcomes.update(await self._cache.announced(chunk))
            except Exception:
                log.exception("events: fetching %d announced secrets failed", len(pending))
                return
            last = attempt == len(RECHECKS)
            pending = set() if last else {name for name, outcome in outcomes.items() if outcome == "unchanged"}
            for name, outcome in outcomes.items():
                if name not in pending:
                    self._fetched(outcome, names[name])
            if not pending:
                return

    def _fetched(self, outcome: str, event_time: str | None) -> None:
        self._metrics.event_fetches.labels(outcome).inc()
        sent = _seconds(event_time)
        if outcome != "failed" and sent is not None:
            self._metrics.event_lag.observe(max(0.0, self._wall_clock() - sent))

    def _answered(self) -> None:
        if self._failing_since is not None:
            log.info("events: the queue answers again")
        self._failing_since = None
        self._metrics.events_up.set(1)
        if not self._answered_once:
            self._answered_once = True
            self._trust(True)

    def _failed(self, error: UpstreamError) -> None:
        now = self._timer()
        self._metrics.events_up.set(0)
        if self._failing_since is None:
            self._failing_since = now
            log.warning("events: receiving failed (%s: %s); the listing is the backstop", error.code, error.hint)
        elif now - self._failing_since >= FALLBACK_AFTER and self._trusted:
            log.warning("events: receiving has failed for %.0fs; listing every SIDECAR_LIST_INTERVAL", FALLBACK_AFTER)
            self._trust(False)

    def _trust(self, trusted: bool) -> None:
        if trusted != self._trusted:
            self._trusted = trusted
            self.trust_changed.set()


def _chunks(names: list[str], size: int) -> list[set[str]]:
    return [set(names[i : i + size]) for i in range(0, len(names), size)]


def _seconds(stamp: str | None) -> float | None:
    """An event's `time` (e.g. 2024-02-06T16:43:48Z) as Unix seconds."""
    if not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
