"""The HTTP face of the daemon: routes, the token check, request limits, JSON errors.

Contract (DESIGN.md): `GET /v1/{variables,connections,config}/{key}` with `team=` and
`refresh=true`; 200 `{"value": ...}` + `X-Cache`, 404 `not_found`, 401 bad token, 400 forwarded,
429 over the limit, 503 upstream failed with nothing usable. `/healthz`, `/readyz`, `/metrics`
need no token and name no key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.hdrs import CONTENT_TYPE, FORWARDED, ORIGIN, X_FORWARDED_FOR
from multidict import CIMultiDict, istr

from sidecar.daemon.cache import Status
from sidecar.daemon.lookup import InvalidSecret, InvalidTeam, Resolver
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import ConfigError, Settings, read_token_file
from sidecar.daemon.sources import UpstreamError
from sidecar.protocol import TOKEN_HEADER

log = logging.getLogger(__name__)

JSON = "application/json; charset=utf-8"
# Header names as multidict's case-insensitive keys, and each found answer's headers built once:
# aiohttp copies a CIMultiDict faster than it reads a dict's keys into one.
TOKEN_KEY, X_CACHE = istr(TOKEN_HEADER), istr("X-Cache")
FOUND_HEADERS = {status: CIMultiDict({CONTENT_TYPE: JSON, X_CACHE: status.value}) for status in Status}
SINGULAR = {"variables": "variable", "connections": "connection", "config": "config option"}
TOKEN_RECHECK_SECONDS = 1.0
TOKEN_MISMATCH_RECHECK_SECONDS = 0.1

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


class Token:
    """The expected token, re-read when its file changes so rotation needs no restart.

    The file is checked once a second, and at once (at most every 0.1 s) when a request offers
    another token: an Airflow process that read the rotated file first is not refused meanwhile.
    """

    def __init__(self, settings: Settings, timer: Callable[[], float] = time.monotonic) -> None:
        self._file = settings.token_file
        self._timer = timer
        self._checked_at = timer()
        self._mismatch_checked_at = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._value = (settings.token or "").encode()
        if self._file:
            self._value, self._stamp = _read_with_stamp(self._file)

    def admits(self, offered: str | None) -> bool:
        """Whether a request offering `offered` in the token header may be served."""
        if not self._value:
            return True  # no token configured: loopback alone guards the daemon
        if offered is None:
            return False
        now = self._timer()
        if self._file and now - self._checked_at >= TOKEN_RECHECK_SECONDS:
            self._reload(now, only_if_changed=True)
        # compare_digest: the time taken does not tell how much of a guess was right.
        if hmac.compare_digest(offered.encode(), self._value):
            return True
        if not self._file or now - self._mismatch_checked_at < TOKEN_MISMATCH_RECHECK_SECONDS:
            return False
        self._mismatch_checked_at = now
        self._reload(now, only_if_changed=False)  # the same stamp may hide a rewrite within one tick
        return hmac.compare_digest(offered.encode(), self._value)

    def _reload(self, now: float, only_if_changed: bool) -> None:
        assert self._file
        self._checked_at = now
        if only_if_changed:
            try:
                stat = os.stat(self._file)
            except OSError:
                return  # mid-swap, or gone: keep the token in force
            if _stamp(stat) == self._stamp:
                return
        try:
            value, stamp = _read_with_stamp(self._file)
        except ConfigError as exc:
            log.error("keeping the previous token: %s", exc)
            return
        self._stamp = stamp
        if value != self._value:
            self._value = value
            log.info("token file changed: the new token is in force")


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _read_with_stamp(path: str) -> tuple[bytes, tuple[int, int, int] | None]:
    """The token in `path` and the stamp of the very file it was read from."""
    try:
        stamp = _stamp(os.stat(path))
    except OSError:
        stamp = None
    token = read_token_file(path).encode()
    # Taken before the read: a rotation after it changes the stamp and is seen at the next check.
    return token, stamp


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


def build_handler(
    settings: Settings,
    resolver: Resolver,
    metrics: Metrics,
    readiness: Readiness,
    token: Token,
    open_connections: Callable[[], Collection[object]] = tuple,
) -> Handler:
    """The handler of every request, for aiohttp's low-level server (`web.Server`). Five paths
    are routed here rather than by an aiohttp application and its router, which cost each hit
    about 27k instructions (callgrind, a trivial handler: 222k per request on an application,
    194k on the low-level server; the daemon's hit: 252k -> 226k).
    `open_connections`: the server's open connections (aiohttp's request handlers)."""
    in_flight = 0
    admitted: set[object] = set()  # connections whose first request found room under max_connections
    bodies: dict[str, bytes] = {}  # value -> its encoded body: a hit encodes nothing

    def refused(request: web.BaseRequest, open_path: bool = False) -> web.Response | None:
        """The error for a request the daemon does not serve, cheapest checks first; else None."""
        headers = request.headers
        if X_FORWARDED_FOR in headers or FORWARDED in headers:
            return error(400, "forwarded", "forwarded requests are refused: call the sidecar directly")
        if ORIGIN in headers:
            return error(403, "browser", "requests from browsers are refused")
        if request.body_exists:
            return error(413, "body_refused", "requests carry no body")
        if open_path:
            return None
        if not token.admits(headers.get(TOKEN_KEY)):
            return error(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header: use the sidecar's token")
        if request.protocol not in admitted and not admit(request.protocol):
            # Closed after the answer: the client retries on a new connection once one of the others has gone.
            response = error(429, "busy", "too many open connections", {"Retry-After": "1"})
            response.force_close()  # aiohttp then says `Connection: close` itself
            return response
        return None

    def admit(connection: object) -> bool:
        """Whether a connection's first request finds room; counted once per connection, not per hit."""
        connections = open_connections()
        if len(connections) > settings.max_connections:
            return False
        if len(admitted) >= settings.max_connections:
            admitted.intersection_update(connections)  # forget the closed ones
        admitted.add(connection)
        return True

    def lookup_of(kind: str) -> Callable[[web.BaseRequest, str], Awaitable[web.Response]]:
        async def lookup(request: web.BaseRequest, key: str) -> web.Response:
            started = time.perf_counter()
            team, refresh = None, False
            if request.query_string:
                team = request.query.get("team") or None
                refresh = request.query.get("refresh", "").lower() in ("1", "true", "yes")
            try:
                response = refused(request)
                if response is None:
                    # A hit is answered with nothing awaited: no task, no timer (wait_for costs both).
                    cached = None if refresh else resolver.resolve_cached(kind, key, team)
                    if cached is not None:
                        response = _answer(kind, key, team, *cached)
                    else:
                        response = await _resolve(kind, key, team, refresh)
            except UpstreamError as exc:
                code = "upstream_unavailable" if exc.transient else "upstream_error"
                log.debug("%s %r: 503 %s", kind, key, exc.code)
                response = error(503, code, f"{exc} ({exc.hint})", {"Retry-After": "1"})
            except asyncio.TimeoutError:
                response = error(503, "timeout", f"AWS did not answer within {settings.request_timeout:g}s")
            except InvalidSecret as exc:
                response = error(503, "invalid_secret", str(exc))
            except InvalidTeam as exc:
                response = error(400, "bad_request", str(exc))
            except Exception:
                response = internal_error(request)
            metrics.requests.observe(kind, response.status, time.perf_counter() - started)
            return response

        return lookup

    async def _resolve(kind: str, key: str, team: str | None, refresh: bool) -> web.Response:
        nonlocal in_flight
        if in_flight >= settings.max_requests:
            return error(429, "busy", "too many requests in flight; retry shortly", {"Retry-After": "1"})
        in_flight += 1
        try:
            value, status = await asyncio.wait_for(
                resolver.resolve(kind, key, team=team, refresh=refresh), settings.request_timeout
            )
        finally:
            in_flight -= 1
        log.debug("%s %r: %s %s", kind, key, "found" if value is not None else "not found", status.value)
        return _answer(kind, key, team, value, status)

    def _answer(kind: str, key: str, team: str | None, value: str | None, status: Status) -> web.Response:
        if value is None:
            return web.json_response(
                {"error": "not_found", "message": _not_found(kind, resolver.names(kind, key, team))},
                status=404,
                headers={"X-Cache": status.value},
            )
        body = bodies.get(value)
        if body is None:
            if len(bodies) >= settings.max_entries:
                bodies.clear()
            body = bodies[value] = json.dumps({"value": value}).encode()
        return web.Response(body=body, headers=FOUND_HEADERS[status])

    def internal_error(request: web.BaseRequest) -> web.Response:
        # Our own bug: say so in JSON. The traceback names code, never a value (none is put in one).
        log.exception("internal error answering %s", request.path)
        return error(500, "internal", "internal error; see the sidecar's log")

    async def open_path(handler: Handler, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return refused(request, open_path=True) or await handler(request)
        except Exception:
            return internal_error(request)

    async def healthz(_: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.BaseRequest) -> web.Response:
        if readiness.lazy:
            return web.json_response({"status": "ready", "mode": "lazy", "reason": readiness.reason})
        if readiness.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": readiness.reason}, status=503)

    async def prometheus(_: web.BaseRequest) -> web.Response:
        response = web.Response(body=metrics.render())
        response.content_type = "text/plain"
        response.headers["Content-Type"] = metrics.content_type
        return response

    lookups = {f"/v1/{kind}": lookup_of(kind) for kind in SINGULAR}
    open_paths: dict[str, Handler] = {"/healthz": healthz, "/readyz": readyz, "/metrics": prometheus}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "GET":
            return error(405, "method_not_allowed", "only GET is served")
        # As aiohttp's router matches: on the path with %2F and %25 still escaped, so that an
        # escaped slash stays in the key; a key is one non-empty segment, then unescaped.
        path = request.rel_url.path_safe
        parent, _, key = path.rpartition("/")
        lookup = lookups.get(parent)
        if lookup is not None and key:
            return await lookup(request, key.replace("%2F", "/").replace("%25", "%") if "%" in key else key)
        handler = open_paths.get(path)
        if handler is not None:
            return await open_path(handler, request)
        return refused(request) or error(404, "not_found", "no such path; see GET /v1/{kind}/{key}")

    return handle


def _not_found(kind: str, names: tuple[str, ...]) -> str:
    """Which secret names were tried: what an operator needs to fix a prefix or a name."""
    if not names:
        return (
            f"no such {SINGULAR[kind]}: no secret name may be looked up for this key (its kind's prefix is "
            "null, its lookup_pattern does not match, or the key is not a valid name)"
        )
    return f"no such {SINGULAR[kind]}: no secret named {' or '.join(names)}"
