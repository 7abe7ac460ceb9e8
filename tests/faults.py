"""A controllable fault layer between the daemon and AWS (moto's server).

    with FaultProxy(aws.endpoint) as proxy:          # give proxy.endpoint to the daemon
        proxy.set("GetSecretValue", "throttle")       # that API answers ThrottlingException
        proxy.set("*", "blackhole")                   # every other API: read, never answered
        proxy.set("BatchGetSecretValue", "late")      # answered by AWS now, delivered at release()
        proxy.set("ListSecrets", "lag", delay=30)     # ListSecrets shows the account as of 30 s ago
        proxy.observe()                               # lag: a change just made counts from now
        proxy.clear()                                 # all normal again

Modes: normal, reset (RST), blackhole, slow (`delay`), hold (the request waits for release()),
late (the answer waits for release()), throttle, 5xx, denied, lag (ListSecrets only, `delay`).

lag models "ListSecrets might not reflect changes from the last five minutes": the layer answers
ListSecrets itself (filters and pages as AWS does) from full snapshots of the account it takes
straight from AWS, and shows each secret as it was `delay` seconds ago: a new secret is hidden, a
deleted one still listed, a moved version map (PutSecretValue, UpdateSecretVersionStage, rotation)
the old one. The lag counts from when the layer first SAW a change in a snapshot: the baseline
taken in set() (whatever it holds is visible at once), then one snapshot per lagged ListSecrets,
and one per observe() (a caller that changes AWS straight and calls it at once lags the change
from when it was made, as AWS does). A snapshot that finishes after a later-started one is
dropped, so concurrent snapshots never bring an older state back. Time is `clock`
(`FaultProxy(upstream, clock=...)` or `proxy.clock = ...`; time.monotonic by default), so a
test's fake clock moves the lag on. The snapshots count in AWS's ListSecrets calls.

lag composes with "*": while "*" is a fault (any mode but normal), a lagged ListSecrets behaves
as that fault (throttle answers ThrottlingException, blackhole never answers, ...), and where the
fault forwards (slow, hold, late) the answer is the lagged view, not AWS's own listing. Its
timelines are kept: after set("*", "normal") it answers lagged again, as if nothing happened in
between. down() refuses its connections as any other.

aiohttp's server and client run on the layer's own event loop in a daemon thread, so tests on
any loop (or none) drive it with plain method calls. A request's API is the last dot-part of its
`X-Amz-Target` (JSON protocol: Secrets Manager, SSM) or the `Action` of its form (query
protocol: STS); errors are shaped as AWS shapes them for that protocol, so botocore parses them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime
import json
import math
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import boto3
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.support import REGION

MODES = frozenset({"normal", "reset", "blackhole", "slow", "hold", "late", "throttle", "5xx", "denied", "lag"})
LAG_APIS = frozenset({"ListSecrets"})  # the APIs "lag" means something for
LIST_KEYS = ("Filters", "MaxResults", "NextToken")  # what a lagged ListSecrets request may carry
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


class _Refused(Exception):
    """A lagged ListSecrets the layer answers with this JSON protocol error."""

    def __init__(self, json_type: str, message: str) -> None:
        super().__init__(message)
        self.json_type = json_type


@dataclass(eq=False)
class _Lag:
    """ListSecrets in lag mode: per secret name, its observed states, (observed_at, entry or None
    for absent), each recorded only when it differs from the name's last one."""

    delay: float
    timelines: dict[str, list[tuple[float, dict[str, Any] | None]]] = field(default_factory=dict)
    tickets: int = 0  # snapshots started
    recorded: int = -1  # the ticket of the latest-started snapshot recorded

    def ticket(self) -> int:
        """Take before starting a snapshot (the layer's lock held); pass to observe()."""
        self.tickets += 1
        return self.tickets

    def observe(self, at: float, snapshot: dict[str, dict[str, Any]], ticket: int = 0) -> None:
        """Record a full snapshot of the account (name -> SecretListEntry) taken at `at`, unless a
        snapshot started after it (a newer `ticket`) was recorded already: it would bring back an
        older state."""
        if ticket < self.recorded:
            return
        self.recorded = ticket
        for name in snapshot.keys() | self.timelines.keys():
            entry = snapshot.get(name)
            timeline = self.timelines.setdefault(name, [])
            if not timeline or _state(timeline[-1][1]) != _state(entry):
                timeline.append((at, entry))

    def view(self, at: float) -> list[dict[str, Any]]:
        """The secrets as observed at `at`, sorted by name: each name's last state by then."""
        visible = []
        for timeline in self.timelines.values():
            seen = [entry for observed, entry in timeline if observed <= at]
            if seen and seen[-1] is not None:
                visible.append(seen[-1])
        return sorted(visible, key=lambda entry: entry["Name"])


class FaultProxy:
    """An HTTP layer between the daemon and AWS (moto's server) that misbehaves on command."""

    def __init__(self, upstream: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream.rstrip("/")
        self.endpoint = ""
        self.clock = clock  # seconds, for "lag"; assignable (a test's fake clock)
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._modes: dict[str, tuple[str, float]] = {}  # api or "*" -> (mode, delay)
        self._waiters: list[_Waiter] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._port = 0
        self._listener: asyncio.AbstractServer | None = None
        self._lag: _Lag | None = None  # ListSecrets' timelines while it is in "lag" mode
        self._aws: Any = None  # the boto3 client lag's snapshots use, made on first use
        self._aws_lock = threading.Lock()

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
        """`api` (or "*": every API without its own mode, and a lagged one while "*" is a fault)
        behaves as `mode` from now on. Requests
        already held stay held until release() or clear(); black holes of an API whose mode is no
        longer "blackhole" are closed. "lag" (ListSecrets only) takes its baseline snapshot here; any
        other mode for ListSecrets ends lag and forgets what it saw."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        lag = None
        if mode == "lag":
            if api not in LAG_APIS:
                raise ValueError(f"mode 'lag' is for {', '.join(sorted(LAG_APIS))} only, not {api!r}")
            if delay < 0:
                raise ValueError(f"lag needs a delay >= 0 seconds, not {delay!r}")
            lag = _Lag(delay)
            lag.observe(-math.inf, self._snapshot()[0])  # the baseline: visible at once
        with self._lock:
            self._modes[api] = (mode, delay)
            if api in LAG_APIS:
                self._lag = lag
            # A black hole lasts while its API's mode is "blackhole": otherwise its connection closes.
            self._settle(lambda w: w.mode == "blackhole" and self._mode_of(w.api)[0] != "blackhole", False)

    def release(self, api: str = "*") -> None:
        with self._lock:
            self._settle(lambda w: w.mode in ("hold", "late") and api in ("*", w.api), True)

    def observe(self) -> int:
        """Lag mode: take a snapshot of the account now (straight from AWS, whatever the modes),
        so that a change just made straight to AWS is lagged from now rather than from the next
        lagged ListSecrets. Returns the ListSecrets calls that took (0 out of lag mode)."""
        with self._lock:
            lag = self._lag
            ticket = lag.ticket() if lag is not None else 0
        if lag is None:
            return 0
        snapshot, calls = self._snapshot()
        with self._lock:
            lag.observe(self.clock(), snapshot, ticket)
        return calls

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
            self._lag = None
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
        """Lock held: the mode `api` behaves as now, with its delay. Its own mode if it has one,
        except that a lagged API behaves as the "*" mode while that is a fault."""
        every = self._modes.get("*") or ("normal", 0.0)
        own = self._modes.get(api)
        if own is None or (own[0] == "lag" and every[0] != "normal"):
            return every
        return own

    def _settle(self, which: Callable[[_Waiter], bool], go: bool) -> None:
        """Lock held: take the matching waiters off the list and tell each to go on or close."""
        chosen = [w for w in self._waiters if which(w)]
        self._waiters = [w for w in self._waiters if w not in chosen]
        for waiter in chosen:
            self._loop.call_soon_threadsafe(_resolve, waiter.future, go)

    def _snapshot(self) -> tuple[dict[str, dict[str, Any]], int]:
        """Blocking: every secret AWS lists now (all pages, no filter), name -> SecretListEntry as
        AWS sends it (dates as epoch seconds), and the ListSecrets calls (pages) that took."""
        with self._aws_lock:
            if self._aws is None:
                config = Config(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 1})
                self._aws = boto3.session.Session().client(
                    "secretsmanager",
                    endpoint_url=self.upstream,
                    region_name=REGION,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    config=config,
                )
            aws = self._aws
        snapshot: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {"MaxResults": 100}
        calls = 0
        while True:
            page = aws.list_secrets(**request)
            calls += 1
            snapshot.update((entry["Name"], _epoch(entry)) for entry in page.get("SecretList", []))
            if not page.get("NextToken"):
                return snapshot, calls
            request["NextToken"] = page["NextToken"]

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
            lag = self._lag if api in LAG_APIS else None

        async def answer() -> web.StreamResponse:
            """What AWS answers: the lagged view instead while the API is in lag mode."""
            return await (self._lagged(request, body, lag) if lag is not None else self._forward(request, body))

        answered = await answer() if mode == "late" else None  # AWS answers now...
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
        response = await answer()  # normal, lag, slow, or hold once released
        if mode == "slow":
            await asyncio.sleep(delay)
        return response

    async def _lagged(self, request: web.BaseRequest, body: bytes, lag: _Lag) -> web.StreamResponse:
        """ListSecrets answered here: a new snapshot now, the view as of `delay` seconds ago."""
        with self._lock:
            ticket = lag.ticket()
        try:
            filters, max_results, after = _list_request(body)
            snapshot, _ = await self._loop.run_in_executor(None, self._snapshot)
        except _Refused as refused:
            return _json_error(400, refused.json_type, str(refused))
        except ClientError as error:  # AWS refused the snapshot: so are we
            meta = error.response.get("ResponseMetadata", {})
            code, message = error.response["Error"].get("Code", ""), error.response["Error"].get("Message", "")
            return _json_error(meta.get("HTTPStatusCode", 500), code, message)
        except BotoCoreError:
            _reset(request.transport)  # AWS unreachable behind us: so are we
            return web.Response()
        with self._lock:
            now = self.clock()
            lag.observe(now, snapshot, ticket)
            view = lag.view(now - lag.delay)
        chosen = [
            entry
            for entry in view
            if entry["Name"] > after and all(_name_matches(entry["Name"], values) for values in filters)
        ]
        page: dict[str, Any] = {"SecretList": chosen[:max_results]}
        if len(chosen) > max_results:
            page["NextToken"] = base64.urlsafe_b64encode(chosen[max_results - 1]["Name"].encode()).decode()
        return web.json_response(
            page, content_type="application/x-amz-json-1.1", headers={"x-amzn-RequestId": str(uuid.uuid4())}
        )

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


def _state(entry: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """What a change means to lag: present or absent, and the version map (stages in any order)."""
    if entry is None:
        return None
    return {version: sorted(stages) for version, stages in (entry.get("SecretVersionsToStages") or {}).items()}


def _epoch(value: Any) -> Any:
    """boto3's answer back as JSON sends it: datetimes as epoch seconds."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {key: _epoch(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_epoch(item) for item in value]
    return value


def _list_request(body: bytes) -> tuple[list[list[str]], int, str]:
    """A lagged ListSecrets request: its "name" filters' values, MaxResults, and the name its
    NextToken continues after ("" for the first page)."""
    try:
        request = json.loads(body or b"{}")
    except ValueError as error:
        raise _Refused("SerializationException", f"fault layer (lag): the body is not JSON: {error}") from None
    unsupported = sorted(key for key, value in request.items() if value and key not in LIST_KEYS)
    if unsupported:
        raise _Refused("ValidationException", f"fault layer (lag) supports only {LIST_KEYS}, not {unsupported}")
    filters = []
    for number, item in enumerate(request.get("Filters") or [], 1):
        if item.get("Key") != "name":
            raise _Refused(
                "ValidationException", f"fault layer (lag) filters by 'name' only, not {item.get('Key')!r} (#{number})"
            )
        filters.append(list(item.get("Values") or []))
    max_results = request.get("MaxResults") or 100
    if not isinstance(max_results, int) or not 1 <= max_results <= 100:
        raise _Refused("ValidationException", f"MaxResults must be 1 to 100, not {max_results!r}")
    token = request.get("NextToken") or ""
    try:
        after = base64.urlsafe_b64decode(token.encode()).decode() if token else ""
    except (binascii.Error, UnicodeError, ValueError):
        raise _Refused("InvalidNextTokenException", f"fault layer (lag): not a NextToken of mine: {token!r}") from None
    return filters, max_results, after


def _name_matches(name: str, values: list[str]) -> bool:
    """The "name" filter as AWS (and moto) apply it: case-sensitive prefixes, OR'd; "!p" matches
    every name that does not start with p."""
    return any(not name.startswith(value[1:]) if value.startswith("!") else name.startswith(value) for value in values)


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
    return _json_error(status, json_type, message, request_id)


def _json_error(status: int, json_type: str, message: str, request_id: str = "") -> web.Response:
    return web.json_response(
        {"__type": json_type, "message": message},
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": request_id or str(uuid.uuid4())},
    )
