"""How an Airflow process reaches the daemon: where it is, which token it takes, and one strict
keep-alive HTTP/1.1 exchange with it. Standard library only, like `sidecar.backend`: every Airflow
process imports it, so the backend, `airflow-secrets-sidecar get` and `probe`, and autostart share
this one module (each module more on the backend's import path costs every Airflow process).

The address: a Unix socket (`unix_socket`, else SIDECAR_UNIX_SOCKET), else a URL (`url`, else
SIDECAR_URL), else, for the CLI only, the daemon's own SIDECAR_HOST / SIDECAR_PORT, else
http://127.0.0.1:2779. A socket wins over a URL, even an explicit one: a daemon given a socket
listens there instead of on TCP, so where the environment names one, no URL reaches that daemon.
The CLI runs beside the daemon (container probes, an operator's shell) and reads its listen
settings as the daemon does; the backend never has: in Airflow's containers those names may mean
something else (Kubernetes sets SIDECAR_PORT=tcp://... for a Service named `sidecar`).

The token, by one rule for every reader, the daemon's too (it reads --token-file, then
SIDECAR_TOKEN_FILE, then SIDECAR_TOKEN): a `token_file`, else a `token`, else SIDECAR_TOKEN_FILE,
else SIDECAR_TOKEN, else, with a Unix socket, the token file autostart generates beside it if it
exists, or with `autostart` even before it does (the first start writes it). A file wins over a
variable so that a rotated file is taken even while a stale SIDECAR_TOKEN lingers in the
environment: the daemon takes the file, and so must everyone asking it.

The exchange: `http.client` is built for any server and parses each response into a message
object, header by header, where the daemon's answer is a few known lines. So this speaks just what
the daemon sends (a status line, headers, a body framed by `Content-Length`) and refuses anything
else with a clear error: no chunked bodies, no head over 8 KiB. One connection per process, thread
and address, kept at module level: Airflow versions that build a new backend object per lookup
(3.0-3.2) still reuse it. A forked child never uses its parent's.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from sidecar import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_URL,
    HOST_ENV,
    PORT_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKEN_HEADER,
    UNIX_SOCKET_ENV,
    URL_ENV,
)

# --- where the daemon is, and its token ---

# (host, port) for TCP, a path for a Unix socket.
Address = tuple[str, int] | str


class Endpoint:
    """The daemon's `address` for `exchange` (a Unix socket's path, or (host, port)); `where`
    it is, for messages; the `url` asked for (or left unused for a `unix_socket`); the `token` to send
    ("" for none), and the `token_file` it was read from, read again (`reread_token`) when the daemon
    refuses it: it may have been rotated.

    A plain class: a dataclass or a NamedTuple is built by generating and compiling code, at every
    import of the backend in every Airflow process, and would show the token in its repr."""

    __slots__ = ("address", "token", "token_file", "unix_socket", "url", "where")

    def __init__(
        self,
        address: str | tuple[str, int],
        where: str,
        url: str,
        unix_socket: str | None,
        token: str = "",
        token_file: str | None = None,
    ) -> None:
        self.address, self.where, self.url, self.unix_socket = address, where, url, unix_socket
        self.token, self.token_file = token, token_file

    def __repr__(self) -> str:
        return f"Endpoint(where={self.where!r}, token_file={self.token_file!r})"  # never the token

    def reread_token(self) -> str:
        """Take the token `token_file` holds now, and return it. Raises OSError as `read_token_file`."""
        assert self.token_file
        self.token = read_token_file(self.token_file)
        return self.token


def resolve(
    url: str | None = None,
    unix_socket: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    *,
    autostart: bool = False,
    daemon_settings: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Endpoint:
    """The endpoint and its token, read now. With `autostart`, a token file that does not exist yet
    is left to read after the start. Raises ValueError for an address the daemon could not listen
    on, OSError for a token file that cannot be read (see `read_token_file`)."""
    endpoint = locate(url, unix_socket, daemon_settings=daemon_settings, environ=environ)
    token_file, token = token_source(token, token_file, endpoint.unix_socket, autostart=autostart, environ=environ)
    if token_file and not (autostart and not os.path.exists(token_file)):
        token = read_token_file(token_file)
    return Endpoint(endpoint.address, endpoint.where, endpoint.url, endpoint.unix_socket, token, token_file)


def locate(
    url: str | None = None,
    unix_socket: str | None = None,
    *,
    daemon_settings: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Endpoint:
    """The address alone, with no token (for `probe`: /healthz and /readyz need none)."""
    unix_socket = unix_socket or environ.get(UNIX_SOCKET_ENV) or None
    url = url or environ.get(URL_ENV) or (_listen_url(environ) if daemon_settings else DEFAULT_URL)
    if unix_socket:
        return Endpoint(unix_socket, f"unix socket {unix_socket}", url, unix_socket)
    return Endpoint(_tcp_address(url), url, url, None)


def token_source(
    token: str | None = None,
    token_file: str | None = None,
    unix_socket: str | None = None,
    *,
    autostart: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> tuple[str | None, str]:
    """Where the token comes from: the file to read (or None), else the token itself ("" for none)."""
    if token_file:
        return token_file, ""
    if token:
        return None, token
    if environ.get(TOKEN_FILE_ENV):
        return environ[TOKEN_FILE_ENV], ""
    if environ.get(TOKEN_ENV):
        return None, environ[TOKEN_ENV]
    if unix_socket:
        generated = token_path(unix_socket)
        if autostart or os.path.exists(generated):
            return generated, ""
    return None, ""


def read_token_file(path: str) -> str:
    """The token in `path`. Raises OSError, whose `filename` and `strerror` say which file and why
    (as open's own do)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except UnicodeDecodeError:
        reason = "not UTF-8 text"
    except ValueError as exc:  # a NUL in the path
        reason = str(exc)
    # Raised here, not in an except clause: the decoding error holds the file's bytes, the token.
    raise OSError(errno.EINVAL, reason, path)


def socket_denied(unix_socket: str) -> str:
    """What to do when this process may not open the daemon's socket (EACCES)."""
    return (
        f"this process (uid {os.getuid()}) may not open the sidecar's socket {unix_socket}: run it in the "
        "group the daemon gives the socket to (its --unix-socket-group / SIDECAR_UNIX_SOCKET_GROUP), or as "
        "the daemon's user"
    )


def token_path(unix_socket: str) -> str:
    """The token file autostart generates beside the socket when no token is configured."""
    return os.path.join(os.path.dirname(os.path.abspath(unix_socket)), "token")


def _listen_url(environ: Mapping[str, str]) -> str:
    return f"http://{environ.get(HOST_ENV) or DEFAULT_HOST}:{environ.get(PORT_ENV) or DEFAULT_PORT}"


def _tcp_address(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)  # ValueError: an unclosed IPv6 bracket
        port = parts.port  # ValueError: not a number, or out of range
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError
    except ValueError:
        raise ValueError(f"must look like {DEFAULT_URL}, got {url!r}") from None
    return parts.hostname, port or 80


# --- one exchange with it ---

MAX_HEAD = 8192
MAX_BODY = 16 * 1024 * 1024  # a secret is at most 64 KiB; JSON escaping cannot make it this large
RECV = 65536
CLOSED = "the sidecar closed the connection without an answer"

_local = threading.local()


class ProtocolError(Exception):
    """The daemon's answer is not the HTTP/1.1 this client speaks."""


def exchange(address: Address, request: bytes, timeout: float) -> tuple[int, bytes, str | None, bytes | None]:
    """Send `request` (a whole GET) and return the status, the body, any Retry-After, and any X-Cache
    as sent (bytes, unstripped: only the CLI shows it).

    A kept-alive connection the daemon has closed while idle is replaced once. Raises OSError
    when the daemon cannot be reached or does not answer within `timeout`, ProtocolError when it
    answers something else than HTTP/1.1 with a Content-Length."""
    for attempt in (1, 2):
        sock, reused = _connection(address, timeout)
        try:
            sock.sendall(request)
            status, body, retry_after, cache, close = _read_response(sock)
        except BlockingIOError:  # the kernel's send or receive timeout passed
            _drop(address)
            raise TimeoutError(f"the sidecar did not answer within {timeout:g}s") from None
        except OSError as exc:  # a closed connection too (ConnectionResetError)
            _drop(address)
            if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                continue
            raise
        except ProtocolError:
            _drop(address)
            raise
        if close:
            _drop(address)
        return status, body, retry_after, cache
    raise AssertionError("unreachable")


def request_tail(token: str) -> bytes:
    """What follows `GET <path>` in a request to the daemon: the version, Host, the token if any."""
    header = f"{TOKEN_HEADER}: {token}\r\n" if token else ""
    return f" HTTP/1.1\r\nHost: localhost\r\n{header}\r\n".encode()


def is_not_found(body: bytes, cache: bytes | None) -> bool:
    """Whether a 404 is the daemon's "no such key": it sends `X-Cache` and its JSON error code with
    it. Another server's 404 (a wrong port, a proxy) is not: taken for one, Airflow would go on to
    its other sources as if AWS held nothing."""
    if cache is None:
        return False
    try:
        return json.loads(body).get("error") == "not_found"
    except (ValueError, AttributeError):  # not JSON, or not an object
        return False


def _connections() -> dict[Address, tuple[socket.socket, float]]:
    """This thread's connections, each with the timeout its socket has."""
    local = _local
    if getattr(local, "pid", None) != os.getpid():  # a fork: the parent's sockets are not ours
        local.pid = os.getpid()
        local.connections = {}
    connections: dict[Address, tuple[socket.socket, float]] = local.connections
    return connections


def _connection(address: Address, timeout: float) -> tuple[socket.socket, bool]:
    connections = _connections()
    sock, has_timeout = connections.get(address, (None, None))
    if sock is not None:
        if has_timeout != timeout:
            _time_out_after(sock, timeout)
            connections[address] = sock, timeout
        return sock, True
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _time_out_after(sock, timeout)
    connections[address] = sock, timeout
    return sock, False


def _time_out_after(sock: socket.socket, timeout: float) -> None:
    """A blocking socket whose sends and receives the kernel times out (BlockingIOError after
    `timeout`): Python's own socket timeouts poll() before every send and receive, a system call
    more for each on every lookup."""
    sock.settimeout(None)
    seconds = int(timeout)
    micro = max(int((timeout - seconds) * 1_000_000), 0 if seconds else 1)  # all zero: no timeout at all
    interval = struct.pack("ll", seconds, micro)  # a struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)


def _drop(address: Address) -> None:
    sock, _ = _connections().pop(address, (None, None))
    if sock is not None:
        sock.close()


def _read_response(sock: socket.socket) -> tuple[int, bytes, str | None, bytes | None, bool]:
    """Status, body, Retry-After, X-Cache, and whether the daemon closes the connection after it."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD:
            raise ProtocolError(f"a response head over {MAX_HEAD} bytes")
        more = sock.recv(RECV)
        if not more:
            raise ConnectionResetError(CLOSED)
        data += more
    status, length, retry_after, cache, close = _parse_head(data[:end])
    body = data[end + 4 :]
    while len(body) < length:
        more = sock.recv(max(RECV, length - len(body)))
        if not more:
            raise ConnectionResetError(CLOSED)
        body += more
    if len(body) > length:
        raise ProtocolError("more bytes than its Content-Length")
    return status, body, retry_after, cache, close


def _parse_head(head: bytes) -> tuple[int, int, str | None, bytes | None, bool]:
    """A response's head, once it has all arrived: status, Content-Length, Retry-After, X-Cache, close."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or rest[3:4] not in (b" ", b""):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:40]!r}")
    length = None
    close = version == b"HTTP/1.0"
    retry_after = cache = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"a malformed header line: {line[:40]!r}")
        name = name.lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise ProtocolError(f"a malformed Content-Length: {value[:20]!r}")
            length = int(value)
        elif name == b"x-cache":  # as sent: the backend never reads it
            cache = value
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"retry-after":
            retry_after = value.strip().decode("latin-1")
        elif name == b"transfer-encoding":
            raise ProtocolError("a chunked response; the daemon always sends Content-Length")
    if length is None:
        raise ProtocolError("a response without Content-Length")
    if length > MAX_BODY:
        raise ProtocolError(f"a body of {length} bytes, over {MAX_BODY}")
    return int(code), length, retry_after, cache, close
