"""Airflow secrets backend that asks the sidecar daemon over loopback HTTP.

Standard library only, and cheap to import: it is loaded by every Airflow process (DAG
parsing, tasks, triggers) and must never pull in boto3, botocore, aiobotocore or aiohttp.

    AIRFLOW__SECRETS__BACKEND=sidecar.backend.SidecarSecretsBackend
    AIRFLOW__SECRETS__BACKEND_KWARGS={"url": "http://127.0.0.1:2779", "token_file": "/var/run/sidecar/token"}

kwargs: `url` (default `SIDECAR_URL` or http://127.0.0.1:2779), `unix_socket` (a path: used instead
of TCP), `token` / `token_file` (default `SIDECAR_TOKEN` / `SIDECAR_TOKEN_FILE`), `timeout` (s).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
from typing import Any
from urllib.parse import quote, urlsplit

try:
    from airflow.secrets import BaseSecretsBackend
except ImportError:  # a worker with only the Task SDK installed
    from airflow.sdk.bases.secrets_backend import BaseSecretsBackend  # type: ignore[no-redef]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:2779"
TOKEN_HEADER = "X-Sidecar-Token"


class SidecarError(Exception):
    """The sidecar could not answer; the message says what to fix."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class SidecarSecretsBackend(BaseSecretsBackend):
    """Variables, connections and config from the airflow-secrets-sidecar daemon."""

    def __init__(
        self,
        url: str | None = None,
        unix_socket: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise SidecarError(
                f"unknown [secrets] backend_kwargs for SidecarSecretsBackend: {sorted(kwargs)}; "
                "supported: url, unix_socket, token, token_file, timeout. Provider kwargs such as "
                "prefixes belong in the sidecar's SIDECAR_BACKEND_KWARGS"
            )
        self.unix_socket = unix_socket or os.environ.get("SIDECAR_UNIX_SOCKET") or None
        self.url = url or os.environ.get("SIDECAR_URL") or DEFAULT_URL
        parts = urlsplit(self.url)
        if self.unix_socket is None and (parts.scheme != "http" or not parts.hostname):
            raise SidecarError(f"backend_kwargs 'url' must look like {DEFAULT_URL}, got {self.url!r}")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self.timeout = float(timeout)
        self._token_file = token_file or (None if token else os.environ.get("SIDECAR_TOKEN_FILE"))
        self._token = token or os.environ.get("SIDECAR_TOKEN") or ""
        if self._token_file:
            self._token = self._read_token_file()
        self._local = threading.local()

    # --- Airflow's interface ---

    def get_conn_value(self, conn_id: str, team_name: str | None = None, **kwargs: Any) -> str | None:
        return self._lookup("connections", conn_id, team_name)

    def get_variable(self, key: str, team_name: str | None = None, **kwargs: Any) -> str | None:
        return self._lookup("variables", key, team_name)

    def get_config(self, key: str, **kwargs: Any) -> str | None:
        return self._lookup("config", key, None)

    # --- HTTP ---

    @property
    def _where(self) -> str:
        return f"unix socket {self.unix_socket}" if self.unix_socket else self.url

    def _lookup(self, kind: str, key: str, team: str | None) -> str | None:
        path = f"/v1/{kind}/{quote(key, safe='')}"
        if team:
            path += f"?team={quote(team, safe='')}"
        status, body = self._request(path)
        if status == 401 and self._token_file:
            self._token = self._read_token_file()  # the token may have been rotated
            status, body = self._request(path)
        if status == 200:
            return json.loads(body)["value"]
        if status == 404:
            return None
        try:
            message = json.loads(body).get("message", "")
        except ValueError:
            message = body[:200].decode("utf-8", "replace")
        if status == 401:
            raise SidecarError(
                f"the sidecar at {self._where} refused the token: give this backend the sidecar's token "
                "(backend_kwargs 'token' or 'token_file', or SIDECAR_TOKEN / SIDECAR_TOKEN_FILE)"
            )
        raise SidecarError(f"the sidecar at {self._where} answered {status} for {kind} {key!r}: {message}")

    def _request(self, path: str) -> tuple[int, bytes]:
        """GET `path` on this thread's keep-alive connection; reconnect once if it was dropped."""
        headers = {TOKEN_HEADER: self._token} if self._token else {}
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                self._local.connection = None
                # A reused connection may have been closed by the daemon while idle: retry once.
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise SidecarError(
                    f"cannot reach the sidecar at {self._where} ({type(exc).__name__}: {exc}): "
                    "is `airflow-secrets-sidecar serve` running, and do backend_kwargs 'url' / "
                    "'unix_socket' point at it?"
                ) from None
            if response.will_close:
                connection.close()
                self._local.connection = None
            return response.status, body
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it was used before. Never shared across a fork."""
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is not None and local.pid == os.getpid():
            return connection, True
        if self.unix_socket:
            connection = _UnixHTTPConnection(self.unix_socket, self.timeout)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        local.connection, local.pid = connection, os.getpid()
        return connection, False

    def _read_token_file(self) -> str:
        assert self._token_file
        try:
            with open(self._token_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise SidecarError(
                f"cannot read the sidecar token file {self._token_file!r} (backend_kwargs 'token_file'): {exc.strerror}"
            ) from None
