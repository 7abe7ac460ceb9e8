"""One running daemon: it assembles source, cache, catalog, events, warm-up and lookup, listens for
HTTP, runs its background loops until told to stop, then shuts them down in reverse. `serve` runs
one under SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from sidecar import __version__
from sidecar.daemon.answers.names import Names
from sidecar.daemon.answers.resolver import Resolver
from sidecar.daemon.cache.cache import STALE_AFTER, Cache
from sidecar.daemon.catalog.listing import Catalog
from sidecar.daemon.catalog.warmup import WarmUp
from sidecar.daemon.events import open_events
from sidecar.daemon.harden import harden
from sidecar.daemon.http.handler import Handler
from sidecar.daemon.http.listen import Listener
from sidecar.daemon.http.scrape import ScrapeListener
from sidecar.daemon.http.token import Token
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.configured import make_source, open_source

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish after SIGTERM
KEEPALIVE_TIMEOUT = 60.0  # seconds an idle client connection is kept open


class Daemon:
    """One running sidecar: `start` is `open` (its parts, then its HTTP listeners) and then
    `run_background`. A test that drives the warm-up and the refresh passes itself calls `open`
    alone; the fleet simulation calls `assemble` over its own AWS client, then `run_background`,
    and serves no HTTP. `stop` closes whatever was started, in reverse."""

    def __init__(
        self,
        settings: Settings,
        *,
        timer: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._timer = timer
        self._jitter = jitter
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.ServerRunner | None = None
        self._listener = Listener(settings)
        self._scrape: ScrapeListener | None = None

    @property
    def url(self) -> str:
        return self._listener.url

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes (SIDECAR_METRICS_PORT); "" when that listener is off."""
        return self._scrape.url if self._scrape is not None else ""

    async def start(self) -> None:
        await self.open()
        self.run_background()

    async def open(self) -> None:
        """Serving HTTP, with nothing in the background yet."""
        await self.assemble()
        await self._serve_http()

    async def assemble(self, client: Any = None) -> None:
        """The parts, in order, each closed in reverse by `stop`. The AWS client is chosen here: the
        daemon's own, or `client` (an object with the same methods, such as the fleet simulation's
        store), which stays the caller's to close."""
        settings = self.settings
        if client is None:
            self.source = await self._stack.enter_async_context(open_source(settings, self.metrics))
        else:
            self.source = make_source(settings, self.metrics, client)
        self.cache = Cache(
            self.source.get,
            fetch_many=self.source.get_many,
            ttl=settings.ttl,
            negative_ttl=settings.negative_ttl,
            max_stale=settings.max_stale,
            max_entries=settings.max_entries,
            metrics=self.metrics,
            # A request never waits on a slow AWS for more than half its time when it could be
            # answered from a stale entry.
            stale_after=min(STALE_AFTER, settings.request_timeout / 2),
            timer=self._timer,
            jitter=self._jitter,
        )
        # The exit stack closes in reverse: fetches under way are cancelled before the AWS client closes.
        self._stack.push_async_callback(self.cache.aclose)
        self.catalog = Catalog(
            self.source,
            Names(settings.store).listed_prefixes(),
            max_stale=settings.max_stale,
            metrics=self.metrics,
            timer=self._timer,
        )
        self.events = None
        if settings.events != "off":
            self.events = await open_events(settings, self.cache, self.metrics, self._stack, self._timer)
        self.warmup = WarmUp(
            settings, self.source, self.catalog, self.cache, timer=self._timer, jitter=self._jitter, events=self.events
        )
        self.resolver = Resolver(
            settings.store,
            self.cache,
            self.catalog if settings.warmup else None,
            timer=self._timer,
            counts=self.metrics.cache_lookups.counts,
        )
        readiness = self.warmup.readiness
        self.metrics.ready.set_function(lambda: float(readiness.ready))

    async def _serve_http(self) -> None:
        settings = self.settings
        handler = Handler(
            settings,
            self.resolver,
            self.metrics,
            self.warmup.readiness,
            Token(settings, self._timer),
            self._open_connections,
        )
        # Idle keep-alive connections count against SIDECAR_MAX_CONNECTIONS: close them after a
        # minute (aiohttp's default is an hour). The backend reconnects on its own.
        server = web.Server(handler, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        await self._listener.start(self._runner)
        if settings.metrics_port is not None:
            self._scrape = ScrapeListener(settings, handler)
            await self._scrape.start()

    def run_background(self) -> None:
        """The loops that keep the answers fresh: the warm-up and its listings, the refresh passes,
        the events consumer."""
        settings = self.settings
        if settings.warmup:
            self._spawn(self.warmup.start())
        self._spawn(self.cache.run_refresher(every=min(1.0, settings.ttl / 20)))
        if self.events is not None:
            self._spawn(self.events.run())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    def _open_connections(self) -> list[object]:
        server = self._runner.server if self._runner is not None else None
        return server.connections if server is not None else []

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, stop every task, then close the AWS client."""
        if self._scrape is not None:
            await self._scrape.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        self._listener.remove_socket()


async def serve(settings: Settings, on_started: Callable[[Daemon], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly; a second signal exits at once (code 1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()  # the first: stop accepting, let requests in flight finish
            return
        # The second: whoever sent it will not wait for the grace period; requests in flight are dropped.
        log.warning("second signal: exiting now")
        logging.shutdown()  # flush the log before the process goes
        os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    daemon = Daemon(settings)
    if settings.harden:
        daemon.metrics.hardened.set(harden())  # before the first AWS call, and before any secret is held
    else:
        log.warning("SIDECAR_HARDEN=false: a core dump or a debugger of this user can read its secrets: debug only")
    try:
        await daemon.start()
        log.info(
            "airflow-secrets-sidecar %s serving %s secrets on %s (ttl %gs, negative ttl %gs, event loop %s)%s",
            __version__,
            settings.source,
            daemon.url,
            settings.ttl,
            settings.negative_ttl,
            settings.event_loop,
            f"; metrics on {daemon.metrics_url}" if daemon.metrics_url else "",
        )
        if on_started is not None:
            on_started(daemon)
        await stop.wait()
        log.info("stopping: finishing requests in flight")
    finally:
        await daemon.stop()
    log.info("stopped")
