"""The checks a request passes before it is served, cheapest first: each returns the refusal, or None.

Every path refuses forwarded requests, browsers and bodies (`direct`); a lookup also needs the
token (`Token.check`) and, on a new connection, room under SIDECAR_MAX_CONNECTIONS (`WithRoom`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from aiohttp import web
from aiohttp.hdrs import FORWARDED, ORIGIN, X_FORWARDED_FOR

from sidecar.daemon.http.errors import error

Guard = Callable[[web.BaseRequest], "web.Response | None"]


def direct(request: web.BaseRequest) -> web.Response | None:
    """Not forwarded by a proxy, not from a browser, without a body."""
    headers = request.headers
    if X_FORWARDED_FOR in headers or FORWARDED in headers:
        return error("forwarded", "forwarded requests are refused: call the sidecar directly")
    if ORIGIN in headers:
        return error("browser", "requests from browsers are refused")
    if request.body_exists:
        return error("body_refused", "requests carry no body")
    return None


class WithRoom:
    """Admits a connection's first request if the server has room; counted once per connection."""

    def __init__(self, max_connections: int, open_connections: Callable[[], Collection[object]]) -> None:
        self._max = max_connections
        self._open = open_connections
        self.admitted: set[object] = set()

    def check(self, request: web.BaseRequest) -> web.Response | None:
        connection = request.protocol
        if connection in self.admitted or self._admit(connection):
            return None
        # Closed after the answer: the client retries on a new connection once one of the others has gone.
        response = error("busy", "too many open connections", {"Retry-After": "1"})
        response.force_close()  # aiohttp then says `Connection: close` itself
        return response

    def _admit(self, connection: object) -> bool:
        connections = self._open()
        if len(connections) > self._max:
            return False
        if len(self.admitted) >= 2 * len(connections):
            # Closed ones are half of it at least: forget them, each of which holds its aiohttp
            # handler and buffers (a handler takes no weak reference). Amortised over the admissions.
            self.admitted.intersection_update(connections)
        self.admitted.add(connection)
        return True


EVERY_PATH: tuple[Guard, ...] = (direct,)
