"""A token file rotated while a stale SIDECAR_TOKEN is still in the environment: the daemon takes the
file, and so must every client. `airflow-secrets-sidecar get` and the backend, against a real daemon
started with SIDECAR_TOKEN_FILE, over TCP and over a Unix socket.

Only the public entry points are used (`sidecar.cli.main`, `SidecarSecretsBackend`), so that this
file also runs against older code, where `get` let SIDECAR_TOKEN win and answered 401.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from sidecar.backend import SidecarSecretsBackend
from sidecar.cli import main
from tests.support import OpenDaemonThread, make_settings

OLD = "old-token-0123456789abcdefghij"
NEW = "new-token-abcdefghij0123456789"


def _write_token(path: str, token: str) -> None:
    """Replace the file atomically, as a rotated Kubernetes secret volume does."""
    with open(f"{path}.new", "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(f"{path}.new", path)


def _status(address: str | tuple[str, int], token: str) -> int:
    """The status the daemon answers a lookup carrying `token` with (HTTP/1.0: it closes after)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(address)
        connection.sendall(
            f"GET /v1/variables/v HTTP/1.0\r\nHost: localhost\r\nX-Sidecar-Token: {token}\r\n\r\n".encode()
        )
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    return int(answer.split(b" ", 2)[1])


def _wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)  # polling a condition


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short directory path: a Unix socket path must stay under ~100 bytes."""
    path = tempfile.mkdtemp(prefix="sc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_rotated_token_file_wins_over_a_stale_sidecar_token_for_get_and_the_backend(
    aws, monkeypatch, capsys, short_dir, transport
):
    aws.put("airflow/variables/v", "rotated fine")
    token_file = os.path.join(short_dir, "token")  # one file, mounted into the daemon and into Airflow
    _write_token(token_file, OLD)
    unix_socket = os.path.join(short_dir, "s.sock") if transport == "unix" else None
    settings = make_settings(
        aws, token_file=token_file, warmup="false", **({"unix_socket": unix_socket} if unix_socket else {})
    )
    with OpenDaemonThread(settings) as running:
        address = unix_socket or running.address
        for name in [name for name in os.environ if name.startswith("SIDECAR_")]:
            monkeypatch.delenv(name)
        # What an operator's shell or a pod spec holds: the file, and the token it had once.
        monkeypatch.setenv("SIDECAR_TOKEN_FILE", token_file)
        monkeypatch.setenv("SIDECAR_TOKEN", OLD)
        if unix_socket:
            monkeypatch.setenv("SIDECAR_UNIX_SOCKET", unix_socket)
        else:
            monkeypatch.setenv("SIDECAR_URL", running.daemon.url)
        assert _status(address, OLD) == 200

        _write_token(token_file, NEW)
        _wait_until(lambda: _status(address, NEW) == 200, "the daemon to take the rotated file")
        assert _status(address, OLD) == 401  # SIDECAR_TOKEN is stale now

        exit_code = main(["get", "variables", "v"])
        out, err = capsys.readouterr()
        assert (exit_code, out) == (0, "rotated fine\n"), err
        assert re.fullmatch(r"\((hit|miss), \d+\.\d ms\)\n", err), err
        assert SidecarSecretsBackend().get_variable("v") == "rotated fine"
