"""The warm-up and the listing loop, and the readiness they decide.

At start the daemon lists its prefixes and loads every value found; then it lists again every
listing interval (jittered, so a fleet started together does not list together ever after) and
brings up to date, in one batch, what the listing says changed, the misses read since the listing
before, and what comes due for refresh before the next one.

While the listing is throttled the daemon serves each key on demand (GetSecretValue has a hundred
times the quota) and lists again at a random moment within the next listing interval, instead of
holding readiness: a fleet started together then lists at a pace its quota takes, each daemon
after one throttled call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sidecar.daemon.cache.cache import Cache
from sidecar.daemon.catalog.listing import Catalog
from sidecar.daemon.events.consumer import Consumer
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.base import Source, UpstreamError

log = logging.getLogger(__name__)

WARMUP_RETRY_MAX = 30.0
LIST_JITTER = (0.9, 1.1)  # a listing interval's spread


class Readiness:
    """Ready once the first warm-up ended, or while it waits its turn or on a throttled listing
    (then each key is looked up on demand: lazily, which /readyz says)."""

    def __init__(self) -> None:
        self.ready = False
        self.lazy = False
        self.reason = "warming up"

    def serve_lazily(self, reason: str) -> None:
        self.ready = self.lazy = True
        self.reason = reason

    def serve_warm(self) -> None:
        self.ready = True
        self.lazy = False
        self.reason = ""

    def not_yet(self, reason: str) -> None:
        self.reason = reason


class WarmUp:
    def __init__(
        self,
        settings: Settings,
        source: Source,
        catalog: Catalog,
        cache: Cache,
        *,
        timer: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
        events: Consumer | None = None,
    ) -> None:
        self._settings = settings
        self._events = events
        self._source = source
        self._catalog = catalog
        self._cache = cache
        self._timer = timer
        self._jitter = jitter
        self.readiness = Readiness()
        if not settings.warmup:
            self.readiness.serve_warm()

    def start(self) -> Coroutine[Any, Any, None]:
        """The loop to run: warm up (after SIDECAR_WARMUP_JITTER's delay, serving lazily until
        then), then list forever."""
        spread = self._settings.warmup_jitter
        delay = self._jitter(0.0, spread) if spread else 0.0
        if delay:  # a fleet's warm-ups spread out; each pod serves on demand until its turn
            self.readiness.serve_lazily(f"warm-up in {delay:.0f}s (SIDECAR_WARMUP_JITTER)")
        return self._run(delay)

    async def _run(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.warm_up()
        while True:
            await self._until_next_listing()
            with contextlib.suppress(UpstreamError):
                await self.list_once()

    async def _until_next_listing(self) -> None:
        """One listing interval from now: the backstop's while events are trusted, else the
        listing's own, worked out again whenever that trust changes."""
        loop = asyncio.get_running_loop()
        start, spread, events = loop.time(), self._jitter(*LIST_JITTER), self._events
        while True:
            trusted = events is not None and events.trusted()
            interval = self._settings.events_list_interval if trusted else self._settings.list_interval
            wait = start + interval * spread - loop.time()
            if wait <= 0:
                return
            if events is None:
                await asyncio.sleep(wait)
                return
            events.trust_changed.clear()
            # Not wait_for: before Python 3.12 it loses a cancel that comes as the wait ends, and
            # the consumer changes its trust as the daemon stops.
            changed = asyncio.ensure_future(events.trust_changed.wait())
            try:
                done, _ = await asyncio.wait((changed,), timeout=wait)
            finally:
                changed.cancel()
            if not done:
                return

    async def warm_up(self) -> None:
        """List the prefixes and load every value found; retry until AWS answers or refuses."""
        delay = 1.0
        values: dict[str, str] = {}  # none while the listing is denied
        while True:
            store = self._cache.fill()
            try:
                _, values = await self._catalog.refresh()
                break
            except UpstreamError as error:
                if not error.transient:
                    break  # listing denied: lazy lookups, already logged
                if error.throttled:
                    self.readiness.serve_lazily(f"{error.api} is throttled ({error.code}): listing again later")
                    wait = self._jitter(0.0, self._settings.list_interval)
                else:
                    self.readiness.not_yet(f"AWS not usable yet: {error.code} ({error.hint})")
                    wait = delay
                    delay = min(delay * 2, WARMUP_RETRY_MAX)
                log.warning("warm-up: %s; retrying in %.0fs", self.readiness.reason, wait)
                await asyncio.sleep(wait)
        store(values)  # the values the listing carried (Parameter Store's)
        unfetched = sorted(name for name in self._catalog.versions if name not in values)
        if unfetched:
            store = self._cache.fill()
            try:
                store(await self._source.get_many(unfetched, ahead=True))
            except UpstreamError as error:
                log.warning("warm-up could not load values (%s): they are fetched on first use", error.code)
        self.readiness.serve_warm()
        log.info("ready: %d entries cached", len(self._cache))

    async def list_once(self) -> None:
        """List, then bring up to date in one batch what the listing says changed, the misses read
        since the last one, and what comes due for refresh before the next one."""
        started = self._timer()
        store = self._cache.fill()
        changed, values = await self._catalog.refresh()
        if self._events is not None:
            self._events.listing_found(changed, started)
        store(values)
        next_listing = self._timer() + self._settings.list_interval * LIST_JITTER[1]
        await self._cache.revalidate(changed, since=started, due_before=next_listing)
