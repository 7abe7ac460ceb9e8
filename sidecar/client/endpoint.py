"""Where the daemon is and which token to send it: one answer for the backend, the CLI and autostart.

Standard library only, like `sidecar.backend`: every Airflow process imports it.

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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from sidecar.protocol import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_URL,
    HOST_ENV,
    PORT_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    UNIX_SOCKET_ENV,
    URL_ENV,
)


class EndpointError(ValueError):
    """The settings name no address the daemon could listen on; the message says what they name."""


class TokenFileError(ValueError):
    """The token file cannot be read: `path`, and why (`reason`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read the token file {path!r}: {reason}")
        self.path, self.reason = path, reason


class Endpoint:
    """The daemon's `address` for sidecar.client.http (a Unix socket's path, or (host, port)); `where`
    it is, for messages; the `url` asked for (or left unused for a `unix_socket`); the `token` to send
    ("" for none), and the `token_file` it was read from, read again when the daemon refuses it: it
    may have been rotated. Not changed once resolved.

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
        set_field = object.__setattr__  # past this class's own, which refuses
        set_field(self, "address", address)
        set_field(self, "where", where)
        set_field(self, "url", url)
        set_field(self, "unix_socket", unix_socket)
        set_field(self, "token", token)
        set_field(self, "token_file", token_file)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"an Endpoint is not changed: resolve another (setting {name!r})")

    def __repr__(self) -> str:
        return f"Endpoint(where={self.where!r}, token_file={self.token_file!r})"  # never the token


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
    is left to read after the start. Raises EndpointError (the address), TokenFileError."""
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
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise TokenFileError(path, exc.strerror or str(exc)) from None


def token_path(unix_socket: str) -> str:
    """The token file autostart generates beside the socket when no token is configured."""
    return os.path.join(os.path.dirname(os.path.abspath(unix_socket)), "token")


def _listen_url(environ: Mapping[str, str]) -> str:
    return f"http://{environ.get(HOST_ENV) or DEFAULT_HOST}:{environ.get(PORT_ENV) or DEFAULT_PORT}"


def _tcp_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port  # ValueError: not a number, or out of range
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError
    except ValueError:
        raise EndpointError(f"must look like {DEFAULT_URL}, got {url!r}") from None
    return parts.hostname, port or 80
