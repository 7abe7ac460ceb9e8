"""The sidecar daemon as its own process (`python -m sidecar serve`), as it runs beside Airflow."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support import FAKE_AWS_ENV, REGION, TOKEN

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0  # under valgrind a start takes seconds more


@dataclass
class SidecarProcess:
    url: str
    token: str
    started_in_s: float  # spawn to /readyz answering 200
    pid: int

    @property
    def port(self) -> int:
        """The TCP port (not for a daemon on a Unix socket)."""
        return int(self.url.rsplit(":", 1)[1])

    @property
    def backend_kwargs(self) -> dict[str, str]:
        return {"url": self.url, "token": self.token}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def aws_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Fake credentials through the standard chain; no profile or config file can point elsewhere."""
    env = dict(os.environ if base is None else base)
    env.update(FAKE_AWS_ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def sidecar_process(
    endpoint: str, python: str = sys.executable, prefix: Sequence[str] = (), **settings: str
) -> Iterator[SidecarProcess]:
    """Start a daemon against `endpoint` with `python` (under `prefix`, e.g. valgrind); `settings`
    become SIDECAR_* variables. Stops it on exit."""
    port = free_port()
    env = aws_env()
    env.update(
        SIDECAR_TOKEN=TOKEN,
        SIDECAR_HOST="127.0.0.1",
        SIDECAR_PORT=str(port),
        SIDECAR_BACKEND_KWARGS=json.dumps({"region_name": REGION, "endpoint_url": endpoint}),
        SIDECAR_LOG_LEVEL="warning",
    )
    env.update({f"SIDECAR_{name.upper()}": value for name, value in settings.items()})
    url = f"unix:{settings['unix_socket']}" if "unix_socket" in settings else f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*prefix, python, "-m", "sidecar", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_ready(process, url, log)
            yield SidecarProcess(url, TOKEN, time.perf_counter() - started, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: IO[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the sidecar exited with {process.returncode} before it was ready:\n{_tail(log)}")
        if _ready(url):
            return
        time.sleep(0.02)
    raise RuntimeError(f"the sidecar was not ready after {READY_TIMEOUT:.0f}s:\n{_tail(log)}")


def _ready(url: str) -> bool:
    """GET /readyz answered 200, over TCP or the Unix socket."""
    try:
        if url.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(2)
            try:
                sock.connect(url[len("unix:") :])
            except OSError:
                sock.close()
                raise
        else:
            host, port = url[len("http://") :].rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=2)
        with sock:
            sock.sendall(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-4000:]
