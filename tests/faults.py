"""A controllable fault layer between the daemon and AWS (moto's server).

    with FaultProxy(aws.endpoint) as proxy:          # give proxy.endpoint to the daemon
        proxy.set("GetSecretValue", "throttle")       # that API answers ThrottlingException
        proxy.set("*", "blackhole")                   # every other API: read, never answered
        proxy.set("BatchGetSecretValue", "late")      # answered by AWS now, delivered at release()
        proxy.clear()                                 # all normal again

Modes: normal, reset (RST), blackhole, slow (`delay`), hold (the request waits for release()),
late (the answer waits for release()), throttle, 5xx, denied.

aiohttp's server and client run on the layer's own event loop in a daemon thread, so tests on
any loop (or none) drive it with plain method calls. A request's API is the last dot-part of its
`X-Amz-Target` (JSON protocol: Secrets Manager, SSM) or the `Action` of its form (query
protocol: STS); errors are shaped as AWS shapes them for that protocol, so botocore parses them.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

MODES = frozenset({"normal", "reset", "blackhole", "slow", "hold", "late", "throttle", "5xx", "denied"})
# mode -> (HTTP status, JSON protocol __type, query protocol (STS) fault type and code)
ERRORS = {
    "throttle": (400, "ThrottlingException", "Sender", "Throttling"),
    "5xx": (503, "ServiceUnavailableException", "Receiver", "ServiceUnavailable"),
    "denied": (400, "AccessDeniedException", "Sender", "AccessDenied"),
}
HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(eq=False)
class _Waiter:
    """A request held or black-holed; its future says True (go on) or False (close)."""

    api: str
    mode: str
    future: asyncio.Future[bool]


class FaultProxy:
    """An HTTP layer between the daemon and AWS (moto's server) that misbehaves on command."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.endpoint = ""
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._modes: dict[str, tuple[str, float]] = {}  # api or "*" -> (mode, delay)
        self._waiters: list[_Waiter] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._port = 0
        self._listener: asyncio.AbstractServer | None = None

    # --- life ---

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- commands ---

    def set(self, api: str, mode: str, *, delay: float = 0.0) -> None:
        """`api` (or "*": every API without its own mode) behaves as `mode` from now on. Requests
        already held stay held until release() or clear(); black holes of an API whose mode is no
        longer "blackhole" are closed."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        with self._lock:
            self._modes[api] = (mode, delay)
            # A black hole lasts while its API's mode is "blackhole": otherwise its connection closes.
            self._settle(lambda w: w.mode == "blackhole" and self._mode_of(w.api)[0] != "blackhole", False)

    def release(self, api: str = "*") -> None:
        with self._lock:
            self._settle(lambda w: w.mode in ("hold", "late") and api in ("*", w.api), True)

    def held(self, api: str = "*") -> int:
        with self._lock:
            return sum(1 for w in self._waiters if api in ("*", w.api))

    def down(self) -> None:
        self._run(self._down())

    def up(self) -> None:
        self._run(self._up())

    def clear(self) -> None:
        with self._lock:
            self._modes.clear()
            self._settle(lambda w: w.mode in ("hold", "late"), True)
            self._settle(lambda w: True, False)
        self.up()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.calls)

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
            time.sleep(0.005)

    # --- internals (the lock held where noted) ---

    def _mode_of(self, api: str) -> tuple[str, float]:
        return self._modes.get(api) or self._modes.get("*") or ("normal", 0.0)

    def _settle(self, which: Callable[[_Waiter], bool], go: bool) -> None:
        """Lock held: take the matching waiters off the list and tell each to go on or close."""
        chosen = [w for w in self._waiters if which(w)]
        self._waiters = [w for w in self._waiters if w not in chosen]
        for waiter in chosen:
            self._loop.call_soon_threadsafe(_resolve, waiter.future, go)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        # handler_cancellation: a client that hangs up ends its request here too (no ghost waiters).
        self._server = web.Server(self._handle, handler_cancellation=True)
        self._session = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))
        await self._up()
        self.endpoint = f"http://127.0.0.1:{self._port}"

    async def _up(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        self._listener = await self._loop.create_server(self._server, sock=sock)

    async def _down(self) -> None:
        if self._listener is not None:
            self._listener.close()  # new connections are refused from here on
            self._listener = None
        with self._lock:
            self._settle(lambda w: True, False)  # their connections are reset just below
        for connection in self._server.connections:
            _reset(connection.transport)

    async def _stop(self) -> None:
        await self._down()
        await self._server.shutdown(1.0)
        await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        api, query = _api_of(request, body)
        with self._lock:
            if api:
                self.calls[api] += 1
            mode, delay = self._mode_of(api)
        answered = await self._forward(request, body) if mode == "late" else None  # AWS answers now...
        with self._lock:
            waiter = None
            if mode in ("hold", "late", "blackhole"):
                waiter = _Waiter(api, mode, self._loop.create_future())
                self._waiters.append(waiter)
        if waiter is not None:
            try:
                go = await waiter.future
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
            if not go:
                if request.transport is not None:
                    request.transport.close()
                return web.Response()  # never sent: the connection is closed
        if answered is not None:
            return answered  # ...and the answer arrives when released
        if mode == "reset":
            _reset(request.transport)
            return web.Response()
        if mode in ERRORS:
            return _error(mode, query)
        response = await self._forward(request, body)
        if mode == "slow":
            await asyncio.sleep(delay)
        return response

    async def _forward(self, request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP}
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            ) as upstream:
                answer = await upstream.read()
                kept = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
                return web.Response(status=upstream.status, body=answer, headers=kept)
        except aiohttp.ClientError:
            _reset(request.transport)  # AWS unreachable behind us: so are we
            return web.Response()


def _resolve(future: asyncio.Future[bool], go: bool) -> None:
    if not future.done():
        future.set_result(go)


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with RST: SO_LINGER on with a zero timeout, then close."""
    if transport is None:
        return  # already gone
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _api_of(request: web.BaseRequest, body: bytes) -> tuple[str, bool]:
    """The API a request calls, and whether it speaks the query protocol (STS)."""
    target = request.headers.get("X-Amz-Target", "")
    if target:
        return target.rsplit(".", 1)[-1], False
    action = request.query.get("Action") or (parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0]
    return action, bool(action)


def _error(mode: str, query: bool) -> web.Response:
    status, json_type, fault, code = ERRORS[mode]
    request_id = str(uuid.uuid4())
    message = "injected by the fault layer"
    if query:
        if mode == "denied":
            status = 403  # STS answers AccessDenied with 403
        xml = (
            f"<ErrorResponse><Error><Type>{fault}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        return web.Response(status=status, text=xml, content_type="text/xml")
    return web.json_response(
        {"__type": json_type, "message": message},
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": request_id},
    )
