"""Assembles source, cache, catalog, resolver and server, and runs them until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import stat
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from sidecar.daemon.cache import STALE_AFTER, Cache
from sidecar.daemon.catalog import Catalog
from sidecar.daemon.http.handler import Readiness, Token, build_handler
from sidecar.daemon.lookup import Resolver, listed_prefixes
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import ConfigError, Settings
from sidecar.daemon.sources import UpstreamError, open_source

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish after SIGTERM
KEEPALIVE_TIMEOUT = 60.0  # seconds an idle client connection is kept open
WARMUP_RETRY_MAX = 30.0
LIST_JITTER = (0.9, 1.1)  # a listing interval's spread


class Daemon:
    """One running sidecar. `background=False` leaves warm-up and refresh passes to the caller;
    `listen=False` serves no HTTP (the caller asks `resolver`); `client` replaces the AWS client."""

    def __init__(
        self,
        settings: Settings,
        *,
        timer: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
        background: bool = True,
        listen: bool = True,
        client: Any = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.readiness = Readiness()
        self._timer = timer
        self._jitter = jitter
        self._background = background
        self._listen_http = listen
        self._client = client
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.ServerRunner | None = None
        self._socket_inode: int | None = None  # the Unix socket this daemon created, to remove at stop
        self.url = ""

    async def start(self) -> None:
        settings = self.settings
        self.source = await self._stack.enter_async_context(open_source(settings, self.metrics, self._client))
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
            listed_prefixes(settings.store),
            max_stale=settings.max_stale,
            metrics=self.metrics,
            timer=self._timer,
        )
        self.resolver = Resolver(settings.store, self.cache, self.catalog if settings.warmup else None)
        if self._listen_http:
            await self._serve_http()
        if not settings.warmup:
            self.readiness.ready = True
        if self._background:
            if settings.warmup:
                delay = self._jitter(0.0, settings.warmup_jitter) if settings.warmup_jitter else 0.0
                if delay:  # a fleet's warm-ups spread out; each pod serves on demand until its turn
                    self.readiness.serve_lazily(f"warm-up in {delay:.0f}s (SIDECAR_WARMUP_JITTER)")
                self._spawn(self._warm_up_then_list(delay))
            self._spawn(self.cache.run_refresher(every=min(1.0, settings.ttl / 20)))

    async def _serve_http(self) -> None:
        settings = self.settings
        handler = build_handler(
            settings, self.resolver, self.metrics, self.readiness, Token(settings, self._timer), self._open_connections
        )
        # Idle keep-alive connections count against SIDECAR_MAX_CONNECTIONS: close them after a
        # minute (aiohttp's default is an hour). The backend reconnects on its own.
        server = web.Server(handler, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        await self._listen(self._runner)

    async def warm_up(self) -> None:
        """List the prefixes and load every value found; retry until AWS answers or refuses.

        While the listing is throttled the daemon serves each key on demand (GetSecretValue has a
        hundred times the quota) and lists again at a random moment within the next listing
        interval, instead of holding readiness: a fleet started together then lists at a pace its
        quota takes, each daemon after one throttled call."""
        delay = 1.0
        while True:
            ticket = self.cache.ticket()
            try:
                await self.catalog.refresh()
                break
            except UpstreamError as error:
                if not error.transient:
                    break  # listing denied: lazy lookups, already logged
                if error.throttled:
                    self.readiness.serve_lazily(f"{error.api} is throttled ({error.code}): listing again later")
                    wait = self._jitter(0.0, self.settings.list_interval)
                else:
                    self.readiness.reason = f"AWS not usable yet: {error.code} ({error.hint})"
                    wait = delay
                    delay = min(delay * 2, WARMUP_RETRY_MAX)
                log.warning("warm-up: %s; retrying in %.0fs", self.readiness.reason, wait)
                await asyncio.sleep(wait)
        unfetched = self._keep_listed_values(ticket)
        if unfetched:
            ticket = self.cache.ticket()
            try:
                self.cache.put_many(await self.source.get_many(unfetched, ahead=True), ticket)
            except UpstreamError as error:
                log.warning("warm-up could not load values (%s): they are fetched on first use", error.code)
        self.readiness.serve_warm()
        log.info("ready: %d entries cached", len(self.cache))

    async def list_forever(self) -> None:
        while True:
            # Jittered: a fleet started together does not list together ever after.
            await asyncio.sleep(self.settings.list_interval * self._jitter(*LIST_JITTER))
            with contextlib.suppress(UpstreamError):
                await self.list_once()

    async def list_once(self) -> None:
        """List, then bring up to date in one batch what the listing says changed, the misses read
        since the last one, and what comes due for refresh before the next one."""
        started = self._timer()
        ticket = self.cache.ticket()
        changed = await self.catalog.refresh()
        self._keep_listed_values(ticket)
        next_listing = self._timer() + self.settings.list_interval * LIST_JITTER[1]
        await self.cache.revalidate(changed, since=started, due_before=next_listing)

    def _keep_listed_values(self, ticket: int) -> list[str]:
        """Cache the values the listing carried (Parameter Store's do); return the names without one."""
        listing = self.catalog.listing
        self.cache.put_many({name: e.value for name, e in listing.items() if e.value is not None}, ticket)
        return sorted(name for name, e in listing.items() if e.value is None)

    async def _warm_up_then_list(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.warm_up()
        await self.list_forever()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    def _open_connections(self) -> list[object]:
        server = self._runner.server if self._runner is not None else None
        return server.connections if server is not None else []

    async def _listen(self, runner: web.ServerRunner) -> None:
        settings = self.settings
        if settings.unix_socket:
            path = settings.unix_socket
            _remove_stale_socket(path)
            old_umask = os.umask(0o117)  # the socket is born 0660: no window with wider access
            try:
                await web.UnixSite(runner, path).start()
            finally:
                os.umask(old_umask)
            if settings.unix_socket_group:
                shutil.chown(path, group=settings.unix_socket_group)
            os.chmod(path, 0o660)
            self._socket_inode = os.stat(path).st_ino
            self.url = f"unix:{path}"
        else:
            site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, stop every task, then close the AWS client."""
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        path = self.settings.unix_socket
        # Only our own socket: never a file we refused to replace, nor another daemon's socket.
        if path and self._socket_inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_ino == self._socket_inode:
                    os.unlink(path)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"--unix-socket / SIDECAR_UNIX_SOCKET: {path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise ConfigError(f"--unix-socket / SIDECAR_UNIX_SOCKET: another process listens on {path!r}")


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
    try:
        await daemon.start()
        log.info(
            "serving %s secrets on %s (ttl %gs, negative ttl %gs, event loop %s)",
            settings.source,
            daemon.url,
            settings.ttl,
            settings.negative_ttl,
            settings.event_loop,
        )
        if on_started is not None:
            on_started(daemon)
        await stop.wait()
        log.info("stopping: finishing requests in flight")
    finally:
        await daemon.stop()
    log.info("stopped")
