"""The listener Prometheus scrapes (SIDECAR_METRICS_PORT): `/metrics`, `/healthz` and `/readyz`,
without the token, on every interface by default, whatever the main listener is (a loopback port or
a Unix socket), so that a pod is scraped by its IP while `/v1` stays on loopback. It never serves `/v1`.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.http import guards
from sidecar.daemon.http.handler import Handler
from sidecar.daemon.settings import Settings

# A scraper, a kubelet's probes and an operator's curl: more open connections than this are refused,
# so that the pod network cannot take the daemon's file descriptors through this port.
MAX_CONNECTIONS = 16
KEEPALIVE_TIMEOUT = 60.0  # s; Prometheus keeps its connection and reuses it at every scrape


class ScrapeListener:
    def __init__(self, settings: Settings, handler: Handler) -> None:
        self._settings = settings
        self._handler = handler
        self._runner: web.ServerRunner | None = None
        self._room = guards.WithRoom(MAX_CONNECTIONS, self._connections)
        self.url = ""

    async def start(self) -> None:
        settings = self._settings
        server = web.Server(self._handle, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.metrics_host or None, settings.metrics_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            where = f"{settings.metrics_host or 'every interface'}, port {settings.metrics_port}"
            raise ConfigError(
                f"cannot listen for metrics on {where} (--metrics-port / SIDECAR_METRICS_PORT, "
                f"--metrics-host / SIDECAR_METRICS_HOST): {exc.strerror or exc}"
            ) from None
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        return self._room.check(request) or await self._handler.open_only(request)

    def _connections(self) -> list[object]:
        server = self._runner.server if self._runner is not None else None
        return server.connections if server is not None else []
