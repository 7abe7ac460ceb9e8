"""The handler of every request, for aiohttp's low-level server (`web.Server`): a method per route.

The contract is docs/http-api.md: `GET /v1/{variables,connections,config}/{key}` with `team=`
and `refresh=true`; 200 `{"value": ...}` + `X-Cache`, 404 `not_found`, the errors of
`errors.FAILURES`; `/healthz`, `/readyz`, `/metrics` need no token and name no key. Five paths
are routed here rather than by an aiohttp application and its router, which costs each hit more
than the rest of the lookup; a cache hit is answered with nothing awaited but the handler itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.hdrs import CONTENT_TYPE
from multidict import CIMultiDict, istr

from sidecar import CONFIG, CONNECTIONS, HEALTHZ, KINDS, LOOKUP_PATH, METRICS, READYZ, VARIABLES, X_CACHE
from sidecar.daemon.answers.resolver import Answer, Resolver
from sidecar.daemon.cache.entry import Status
from sidecar.daemon.catalog.warmup import Readiness
from sidecar.daemon.http import guards
from sidecar.daemon.http.errors import Busy, error, failure, internal_error
from sidecar.daemon.http.token import Token
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings

log = logging.getLogger(__name__)

JSON = "application/json; charset=utf-8"
# Each found answer's headers built once: aiohttp copies a CIMultiDict faster than it reads a
# dict's keys into one.
FOUND_HEADERS = {status: CIMultiDict({CONTENT_TYPE: JSON, istr(X_CACHE): status.value}) for status in Status}
NO_SUCH_PATH = "no such path; see GET /v1/{kind}/{key}"
SINGULAR = {VARIABLES: "variable", CONNECTIONS: "connection", CONFIG: "config option"}

Route = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Handler:
    """`open_connections`: the server's open connections (aiohttp's request handlers)."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        metrics: Metrics,
        readiness: Readiness,
        token: Token,
        open_connections: Callable[[], Collection[object]] = tuple,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._metrics = metrics
        self._readiness = readiness
        self._kinds = {LOOKUP_PATH + kind: kind for kind in KINDS}
        self._open: dict[str, Route] = {HEALTHZ: self.healthz, READYZ: self.readyz, METRICS: self.prometheus}
        self.room = guards.WithRoom(settings.max_connections, open_connections)
        self._lookup_guards = (*guards.EVERY_PATH, token.check, self.room.check)
        self.in_flight = 0  # lookups waiting on AWS

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "GET":
            return error("method_not_allowed", "only GET is served")
        # As aiohttp's router matches: on the path with %2F and %25 still escaped, so that an
        # escaped slash stays in the key; a key is one non-empty segment, then unescaped.
        path = request.rel_url.path_safe
        parent, _, key = path.rpartition("/")
        kind = self._kinds.get(parent)
        if kind is None or not key:
            route = self._open.get(path)
            if route is not None:
                return await self._open_path(route, request)
            return _refused(request, self._lookup_guards) or error("not_found", NO_SUCH_PATH)
        # A variable, connection or config key: from fresh entries with nothing awaited, else from AWS.
        started = time.perf_counter()
        if "%" in key:
            key = key.replace("%2F", "/").replace("%25", "%")
        team, refresh = None, False
        if request.query_string:
            team = request.query.get("team") or None
            refresh = request.query.get("refresh", "").lower() in ("1", "true", "yes")
        response = self._from_cache(request, kind, key, team, refresh)
        if response is None:
            response = await self._from_aws(request, kind, key, team, refresh)
        self._metrics.requests.observe(time.perf_counter() - started, kind, response.status)
        return response

    def _from_cache(
        self, request: web.BaseRequest, kind: str, key: str, team: str | None, refresh: bool
    ) -> web.Response | None:
        """The response the guards or the fresh entries give; None when AWS must be asked."""
        try:
            for check in self._lookup_guards:
                response = check(request)
                if response is not None:
                    return response
            resolved = None if refresh else self._resolver.peek(kind, key, team)
            return None if resolved is None else _answer(kind, *resolved)
        except Exception as exc:
            return failure(exc, self._settings, request.path)

    async def _from_aws(
        self, request: web.BaseRequest, kind: str, key: str, team: str | None, refresh: bool
    ) -> web.Response:
        """A lookup that waits on AWS: within SIDECAR_MAX_REQUESTS and SIDECAR_REQUEST_TIMEOUT."""
        if self.in_flight >= self._settings.max_requests:
            return failure(Busy(), self._settings, request.path)
        self.in_flight += 1
        try:
            answer, status = await asyncio.wait_for(
                self._resolver.get(kind, key, team, refresh), self._settings.request_timeout
            )
            log.debug("%s %r: %s %s", kind, key, "found" if answer.value is not None else "not found", status.value)
            return _answer(kind, answer, status)
        except Exception as exc:
            return failure(exc, self._settings, request.path)
        finally:
            self.in_flight -= 1

    async def open_only(self, request: web.BaseRequest) -> web.StreamResponse:
        """The metrics listener's handler (scrape.py): the paths that need no token, nothing else."""
        route = self._open.get(request.rel_url.path) if request.method == "GET" else None
        if route is None:
            return error("not_found", "this listener serves GET /metrics, /healthz and /readyz only")
        return await self._open_path(route, request)

    async def healthz(self, _: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.BaseRequest) -> web.Response:
        readiness = self._readiness
        if readiness.lazy:
            return web.json_response({"status": "ready", "mode": "lazy", "reason": readiness.reason})
        if readiness.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": readiness.reason}, status=503)

    async def prometheus(self, _: web.BaseRequest) -> web.Response:
        response = web.Response(body=self._metrics.render())
        response.content_type = "text/plain"
        response.headers["Content-Type"] = self._metrics.content_type
        return response

    async def _open_path(self, route: Route, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return _refused(request, guards.EVERY_PATH) or await route(request)
        except Exception:
            return internal_error(request.path)


def _refused(request: web.BaseRequest, checks: tuple[guards.Guard, ...]) -> web.Response | None:
    for check in checks:
        refusal = check(request)
        if refusal is not None:
            return refusal
    return None


def _answer(kind: str, answer: Answer, status: Status) -> web.Response:
    if answer.value is None:
        return web.json_response(
            {"error": "not_found", "message": _not_found(kind, answer.names)},
            status=404,
            headers={X_CACHE: status.value},
        )
    return web.Response(body=answer.body, headers=FOUND_HEADERS[status])


def _not_found(kind: str, names: tuple[str, ...]) -> str:
    """Which secret names were tried: what an operator needs to fix a prefix or a name."""
    if not names:
        return (
            f"no such {SINGULAR[kind]}: no secret name may be looked up for this key (its kind's prefix is "
            "null, its lookup_pattern does not match, or the key is not a valid name)"
        )
    return f"no such {SINGULAR[kind]}: no secret named {' or '.join(names)}"
