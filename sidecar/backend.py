"""Airflow secrets backend that asks the sidecar daemon over loopback HTTP.

Standard library only, and cheap to import: it is loaded by every Airflow process (DAG
parsing, tasks, triggers) and must never pull in boto3, botocore, aiobotocore or aiohttp.

    AIRFLOW__SECRETS__BACKEND=sidecar.backend.SidecarSecretsBackend
    AIRFLOW__SECRETS__BACKEND_KWARGS={"url": "http://127.0.0.1:2779", "token_file": "/var/run/sidecar/token"}

kwargs: `url` (default `SIDECAR_URL` or http://127.0.0.1:2779), `unix_socket` (a path, default
`SIDECAR_UNIX_SOCKET`: used instead of TCP), `token` / `token_file` (default `SIDECAR_TOKEN_FILE`,
else `SIDECAR_TOKEN`: a file wins, as at the daemon; the whole rule, the same for the CLI, is in
sidecar/client.py), `timeout` (s an answer of the daemon may take, above 0, default 10),
`startup_wait` (s the first lookup of a process waits for a daemon still starting, default 5),
`autostart` (true, or the path of an `airflow-secrets-sidecar` executable: with `unix_socket`, start
the daemon when none answers, once per socket however many processes race; see sidecar/autostart.py),
`on_unavailable` ("error", or "direct": ask AWS through the provider backend when no daemon
answers), `fallback_kwargs` (that backend's kwargs; default `SIDECAR_BACKEND_KWARGS`),
`source` ("secretsmanager" or "ssm": which provider backend) and `local_ttl` (s this process
answers a key again from the daemon's last answer without asking it, found or not; default 5, 0 for
never; docs/configuration.md#answers-kept-in-each-process says why and what it adds to each bound).

A 404 is None only as the daemon sends it (`client.is_not_found`): another server's 404 (a wrong
port, a proxy) is an error, or Airflow would go on as if AWS held nothing.

A daemon that is too busy (429) is asked again after its `Retry-After`, for at most `timeout`
seconds in all. After a 401, a `token_file` is re-read and the request retried a few times over
at most a second: the daemon and this process may see a rotated file at slightly different times.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

try:
    from airflow.secrets import BaseSecretsBackend
except ImportError:  # a worker with only the Task SDK installed
    from airflow.sdk.bases.secrets_backend import BaseSecretsBackend  # type: ignore[no-redef]

from sidecar import SECRETSMANAGER, SOURCE_ENV, STORES, TEAM_SEP, client

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # for annotations only: evaluated, they would cost every Airflow process's import
    Answers = dict[tuple[str, str, str | None], tuple[float, str | None]]  # (kind, key, team) -> (when, value)

AUTOSTART_RETRY = 10.0  # s after a failed autostart before this process tries again
# After a 401 with a token file: re-read it and retry after these pauses (s), within `timeout`. The
# daemon takes a rotated file when a token mismatches, but only once per short interval
# (TOKEN_MISMATCH_RECHECK_SECONDS, sidecar/daemon/http/token.py): one retry may come too early.
TOKEN_RETRY_PAUSES = (0.0, 0.05, 0.1, 0.2, 0.4)
BUSY_PAUSE = 0.2  # s before asking a busy daemon (429) again when it sent no usable Retry-After
MIN_BUSY_PAUSE = 0.05  # never hammer a busy daemon, whatever its Retry-After says
KWARGS = (
    "url",
    "unix_socket",
    "token",
    "token_file",
    "timeout",
    "startup_wait",
    "autostart",
    "on_unavailable",
    "fallback_kwargs",
    "source",
    "local_ttl",
)
LOCAL_TTL = 5.0  # s; the default of `local_ttl`
LOCAL_MAX_ENTRIES = 256  # answers kept per daemon address; the oldest is dropped past it


class SidecarError(Exception):
    """The sidecar could not answer; the message says what to fix."""


class SidecarUnreachable(SidecarError):
    """No daemon listens at the configured address."""


def _multi_team() -> bool:
    """Airflow's `[core] multi_team` (3.2+); False where the option or the core config is absent."""
    try:
        from airflow.configuration import conf
    except ImportError:
        from airflow.sdk.configuration import conf  # type: ignore[no-redef]
    return conf.getboolean("core", "multi_team", fallback=False)


_paths: dict[tuple[str, str, str | None], bytes] = {}  # (kind, key, team) -> the request's first bytes
PATHS_MAX = 4096  # remembered; all dropped at once past it


def _path(kind: str, key: str, team: str | None) -> bytes:
    """`GET /v1/{kind}/{key}[?team=]`, percent-encoded once per key and process."""
    path = _paths.get((kind, key, team))
    if path is None:
        text = f"GET /v1/{kind}/{quote(key, safe='')}"
        if team:
            text += f"?team={quote(team, safe='')}"
        if len(_paths) >= PATHS_MAX:
            _paths.clear()
        path = _paths[kind, key, team] = text.encode()
    return path


# The daemon's recent answers in this process, per address: (kind, key, team) -> (when, value or
# None). Module-level, not per backend object: Airflow 3.0-3.2 build one per lookup. Reads take no
# lock (one dict lookup); stores take `_store_lock`. A forked child starts with none, and with a
# lock of its own: one held by a thread of its parent would never be released in it.
_answers: dict[client.Address, Answers] = {}
_store_lock = threading.Lock()
_clock = time.monotonic  # tests inject theirs


def _forget_answers() -> None:
    global _store_lock
    for answers in _answers.values():
        answers.clear()
    _store_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_answers)


def _keep(answers: Answers, key: tuple[str, str, str | None], value: str | None) -> None:
    """Keep the daemon's answer for `key` (kind, key, team) from now."""
    with _store_lock:
        answers.pop(key, None)  # re-inserted last: the oldest goes first
        if len(answers) >= LOCAL_MAX_ENTRIES:
            del answers[next(iter(answers))]
        answers[key] = (_clock(), value)


def _busy_pause(retry_after: str | None) -> float:
    """Seconds to wait after a 429: its Retry-After (delta-seconds), else a short default."""
    try:
        seconds = float(retry_after or "")
    except ValueError:  # absent, an HTTP date, or garbage: the daemon sends seconds
        return BUSY_PAUSE
    return BUSY_PAUSE if math.isnan(seconds) else max(seconds, MIN_BUSY_PAUSE)


def _value(body: bytes) -> str | None:
    """The value a 200's body holds; None when it holds none. The caller raises, outside this
    except clause: a decoding error holds the body, which is the secret."""
    try:
        value = json.loads(body.decode())["value"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _refuse_unknown(kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise SidecarError(
            f"unknown [secrets] backend_kwargs for SidecarSecretsBackend: {sorted(kwargs)}; "
            f"supported: {', '.join(KWARGS)}. Provider kwargs such as prefixes belong in the "
            "sidecar's SIDECAR_BACKEND_KWARGS"
        )


def _on_unavailable(on_unavailable: str) -> str:
    if on_unavailable not in ("error", "direct"):
        raise SidecarError(f"backend_kwargs 'on_unavailable' must be 'error' or 'direct', got {on_unavailable!r}")
    return on_unavailable


def _source(source: str | None) -> str:
    source = source or os.environ.get(SOURCE_ENV) or SECRETSMANAGER
    if source not in STORES:
        raise SidecarError(f"backend_kwargs 'source' must be 'secretsmanager' or 'ssm', got {source!r}")
    return source


def _seconds(name: str, value: Any, *, zero: bool = True) -> float:
    """A kwarg in seconds: a JSON number (not text, not true or false); 0 only if `zero`."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0 <= value < math.inf or (value == 0 and not zero):
        raise SidecarError(
            f"backend_kwargs {name!r} must be a number of seconds, {'0 or more' if zero else 'above 0'}, got {value!r}"
        )
    return float(value)


def _autostart(autostart: bool | str) -> bool | str:
    if not (autostart is False or autostart is True or (isinstance(autostart, str) and os.path.isabs(autostart))):
        raise SidecarError(
            "backend_kwargs 'autostart' must be true, false or the absolute path of an "
            f"airflow-secrets-sidecar executable, got {autostart!r}"
        )
    return autostart


def _endpoint(
    url: str | None, unix_socket: str | None, token: str | None, token_file: str | None, autostart: bool
) -> client.Endpoint:
    """sidecar.client's one answer, its errors named after these kwargs."""
    try:
        endpoint = client.resolve(url, unix_socket, token, token_file, autostart=autostart)
    except OSError as exc:
        raise _token_file_error(exc) from None
    except ValueError as exc:
        raise SidecarError(f"backend_kwargs 'url' {exc}") from None
    if autostart and endpoint.unix_socket is None:
        raise SidecarError(
            "backend_kwargs 'autostart' needs 'unix_socket' too: a path in a directory of its own, "
            "such as /tmp/airflow-secrets-sidecar/sidecar.sock"
        )
    return endpoint


def _token_file_error(exc: OSError) -> SidecarError:
    return SidecarError(
        f"cannot read the sidecar token file {exc.filename!r} (backend_kwargs 'token_file'): {exc.strerror}"
    )


class _LocalState:
    """What one backend object learns and prepares in this process, between lookups."""

    __slots__ = ("answers", "fallback", "multi_team", "reached", "request_tail", "start_failure")

    def __init__(self, answers: Answers | None) -> None:
        # Its address's entry in `_answers`, shared by every backend object of the process; None
        # when `local_ttl` is 0: this backend then neither reads nor keeps any.
        self.answers = answers
        self.reached = False  # once the daemon answered, a refused connection fails at once
        self.request_tail: bytes | None = None  # what follows GET <path>, the endpoint's token in it; built when None
        self.start_failure: tuple[float, str] | None = None  # when autostart last failed, and its message
        self.multi_team: bool | None = None  # read at the first id that holds TEAM_SEP
        self.fallback: Any = None  # sidecar.direct's, built when first needed


class SidecarSecretsBackend(BaseSecretsBackend):
    """Variables, connections and config from the airflow-secrets-sidecar daemon."""

    def __init__(
        self,
        url: str | None = None,
        unix_socket: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        timeout: float = 10.0,
        startup_wait: float = 5.0,
        autostart: bool | str = False,
        on_unavailable: str = "error",
        fallback_kwargs: dict[str, Any] | None = None,
        source: str | None = None,
        local_ttl: float = LOCAL_TTL,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _refuse_unknown(kwargs)
        self.local_ttl = _seconds("local_ttl", local_ttl)
        self.on_unavailable = _on_unavailable(on_unavailable)
        self.source = _source(source)
        self.startup_wait = _seconds("startup_wait", startup_wait)
        self.timeout = _seconds("timeout", timeout, zero=False)
        self._fallback_kwargs = fallback_kwargs
        self.autostart = _autostart(autostart)
        # Its token changes only by `_reread_token`; the rest of it never does.
        endpoint = self._endpoint = _endpoint(url, unix_socket, token, token_file, autostart is not False)
        self._local = _LocalState(_answers.setdefault(endpoint.address, {}) if self.local_ttl else None)

    @property
    def url(self) -> str:
        """The daemon's URL, as resolved (unused with a `unix_socket`)."""
        return self._endpoint.url

    @property
    def unix_socket(self) -> str | None:
        """The daemon's socket, as resolved, or None for TCP."""
        return self._endpoint.unix_socket

    # --- Airflow's interface ---

    def get_conn_value(self, conn_id: str, team_name: str | None = None, **kwargs: Any) -> str | None:
        return self._lookup("connections", conn_id, team_name)

    def get_variable(self, key: str, team_name: str | None = None, **kwargs: Any) -> str | None:
        return self._lookup("variables", key, team_name)

    def get_config(self, key: str, **kwargs: Any) -> str | None:
        return self._lookup("config", key, None)

    def _in_multi_team_mode(self) -> bool:
        local = self._local
        if local.multi_team is None:  # not at construction: Airflow 3.0-3.2 build a backend per lookup
            local.multi_team = _multi_team()
        return local.multi_team

    # --- HTTP ---

    def _lookup(self, kind: str, key: str, team: str | None) -> str | None:
        if not key:
            return None  # no secret is named by an empty key: the daemon has no path for one
        if TEAM_SEP in key and self._in_multi_team_mode():
            # As the provider backends do: such an id could name another team's secret.
            log.warning(
                "%s id %r contains %r, which separates the team name from the secret id in a team "
                "scoped secret name. Such an id is ambiguous and is not looked up. Returning None.",
                {"variables": "Variable", "connections": "Connection", "config": "Configuration option"}[kind],
                key,
                TEAM_SEP,
            )
            return None
        answers = self._local.answers
        if answers is not None:
            held = answers.get((kind, key, team))
            if held is not None:
                if _clock() - held[0] < self.local_ttl:
                    return held[1]
                with _store_lock:  # its value leaves memory now, whatever the daemon answers
                    answers.pop((kind, key, team), None)
        try:
            value = self._ask(kind, key, team)
        except SidecarUnreachable:
            if self.on_unavailable != "direct":
                raise
            return self._ask_aws_directly(kind, key, team)
        if answers is not None:
            _keep(answers, (kind, key, team), value)
        return value

    def _ask(self, kind: str, key: str, team: str | None) -> str | None:
        """The daemon's value for the key; None for its "no such key"."""
        path = _path(kind, key, team)
        status, body, retry_after, cache = self._request(path)
        if status == 429 or status == 401:
            status, body, cache = self._ask_again(path, status, body, retry_after)
        if status == 200:
            value = _value(body)
            if value is None:
                raise SidecarError(f"the sidecar at {self._endpoint.where} sent a malformed answer for {kind} {key!r}")
            return value
        if status == 404:
            if client.is_not_found(body, cache):
                return None
            raise SidecarError(
                f"{self._endpoint.where} answered 404 for {kind} {key!r}, but not as the sidecar does: another server "
                "listens there (a wrong port, a proxy?). Point backend_kwargs 'url' / 'unix_socket' at "
                "`airflow-secrets-sidecar serve`"
            )
        try:
            message = json.loads(body).get("message", "")
        except ValueError:
            message = body[:200].decode("utf-8", "replace")
        if status == 401:
            raise SidecarError(
                f"the sidecar at {self._endpoint.where} refused the token: give this backend the sidecar's token "
                "(backend_kwargs 'token' or 'token_file', or SIDECAR_TOKEN / SIDECAR_TOKEN_FILE)"
            )
        if status == 429:
            raise SidecarError(
                f"the sidecar at {self._endpoint.where} stayed too busy (429) to answer {kind} {key!r} within "
                f"{self.timeout:g}s: {message}. Raise its SIDECAR_MAX_REQUESTS / SIDECAR_MAX_CONNECTIONS, "
                "or this backend's 'timeout'"
            )
        raise SidecarError(f"the sidecar at {self._endpoint.where} answered {status} for {kind} {key!r}: {message}")

    def _ask_again(
        self, path: bytes, status: int, body: bytes, retry_after: str | None
    ) -> tuple[int, bytes, bytes | None]:
        """Ask again, within `timeout` in all, while the daemon is busy (429) or refuses a token
        that may have been rotated since this process read it (401); the last status, body and X-Cache."""
        cache = None
        deadline = time.monotonic() + self.timeout
        token_pauses = iter(TOKEN_RETRY_PAUSES if self._endpoint.token_file else ())
        while True:
            if status == 429:
                pause = min(_busy_pause(retry_after), deadline - time.monotonic())
                if pause <= 0:
                    break
                time.sleep(pause)  # the daemon is over its request or connection limit: give it room
            elif status == 401:
                pause = next(token_pauses, None)
                if pause is None or time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
                self._reread_token()  # it may have been rotated
            else:
                break
            status, body, retry_after, cache = self._request(path)
        return status, body, cache

    def _request(self, path: bytes) -> tuple[int, bytes, str | None, bytes | None]:
        """GET `path`: status, body, Retry-After, X-Cache. The first lookup of a process waits up to `startup_wait`."""
        local = self._local
        deadline = time.monotonic() + (0 if local.reached else self.startup_wait)
        pause = 0.05
        started = False
        while True:
            try:
                answer = self._request_once(path)
            except SidecarUnreachable:
                if self.autostart is not False and not started:
                    self._start_daemon()  # returns once a daemon listens
                    started = True
                    continue
                if time.monotonic() + pause > deadline:
                    local.reached = True  # waited once: later lookups fail (or fall back) at once
                    raise
                time.sleep(pause)  # the daemon may still be starting (pods start containers together)
                pause = min(pause * 2, 0.5)
                continue
            local.reached = True
            return answer

    def _request_once(self, path: bytes) -> tuple[int, bytes, str | None, bytes | None]:
        """GET `path` on this thread's keep-alive connection to the daemon."""
        tail = self._local.request_tail
        if tail is None:  # first use, or a re-read token file
            tail = self._local.request_tail = client.request_tail(self._endpoint.token)
        try:
            return client.exchange(self._endpoint.address, path + tail, self.timeout)
        except client.ProtocolError as exc:
            raise SidecarError(f"the sidecar at {self._endpoint.where} sent a malformed answer: {exc}") from None
        except OSError as exc:
            endpoint = self._endpoint
            if isinstance(exc, PermissionError) and endpoint.unix_socket:
                raise SidecarError(client.socket_denied(endpoint.unix_socket)) from None
            # Refused, or no socket file: nobody listens (yet). Anything else is a sick daemon.
            unreachable = isinstance(exc, (ConnectionRefusedError, FileNotFoundError))
            raise (SidecarUnreachable if unreachable else SidecarError)(
                f"cannot reach the sidecar at {endpoint.where} ({type(exc).__name__}: {exc}): "
                "is `airflow-secrets-sidecar serve` running, and do backend_kwargs 'url' / "
                "'unix_socket' point at it?"
            ) from None

    def _start_daemon(self) -> None:
        """Start the daemon (or wait for the process starting it); SidecarUnreachable if it does not come up."""
        from sidecar import autostart  # only here: it imports subprocess

        endpoint, local = self._endpoint, self._local
        assert endpoint.unix_socket
        if local.start_failure and time.monotonic() - local.start_failure[0] < AUTOSTART_RETRY:
            raise SidecarUnreachable(local.start_failure[1])
        try:
            pid = autostart.start(endpoint, self.autostart)
        except autostart.StartError as exc:
            message = f"no sidecar answered on {endpoint.where}, and autostart could not start one: {exc}"
            local.start_failure = (time.monotonic(), message)
            raise SidecarUnreachable(message) from None
        local.start_failure = None
        if pid is not None:
            where_logs = autostart.log_path(endpoint.unix_socket)
            log.info("started the sidecar daemon (pid %d) on %s; its log: %s", pid, endpoint.where, where_logs)
        if endpoint.token_file:
            self._reread_token()  # generated by the first start, or rotated since

    def _ask_aws_directly(self, kind: str, key: str, team: str | None) -> str | None:
        """on_unavailable="direct": sidecar.direct, which builds the provider backend once."""
        from sidecar import direct  # only here: the provider backend imports boto3

        local = self._local
        if local.fallback is None:
            local.fallback = direct.DirectFallback(self.source, self._fallback_kwargs, self._endpoint.where)
        try:
            return local.fallback.lookup(kind, key, team)
        except direct.ProviderMissing as exc:
            raise SidecarError(str(exc)) from None

    def _reread_token(self) -> None:
        """Take the token file's token now: the endpoint's, and the next request's."""
        try:
            self._endpoint.reread_token()
        except OSError as exc:
            raise _token_file_error(exc) from None
        self._local.request_tail = None
