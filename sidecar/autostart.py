"""Start the daemon from the backend when none answers, for images where nothing but Airflow may be
started (Astro Hosted). Standard library only: the backend imports it in every Airflow process.

One daemon per Unix socket: the first lookup that finds nobody listening takes an exclusive lock
beside the socket, starts `airflow-secrets-sidecar serve` detached, and waits until it listens.
Processes racing it wait on the lock, then connect. The daemon runs in its own session and its
launcher exits at once, so it is reparented to the container's init: it outlives the task that
started it, a Ctrl-C or a `killpg` of Airflow's process group does not reach it, and it is never a
zombie of an Airflow process. It starts with the container's environment, not the caller's
(`daemon_environment`), and reads the same `SIDECAR_*` variables as ever.

Beside the socket, in a directory only this user may write (made 0700 if missing):
  <socket>.lock   the start lock
  token           a generated token (0600) when no token is configured
  sidecar.log     the daemon's output (moved to sidecar.log.1 past 10 MiB)
  sidecar.pid     the daemon's pid
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

from sidecar import TOKEN_ENV, TOKEN_FILE_ENV
from sidecar.client import Endpoint, token_path

# The Astro recipe's virtualenv: the daemon's dependencies stay out of Airflow's environment.
RECIPE_VENV = "/opt/airflow-secrets-sidecar"
RECIPE_COMMAND = f"{RECIPE_VENV}/bin/airflow-secrets-sidecar"
START_WAIT = 30.0  # s a lookup waits for a daemon it (or a racing process) started
LOG_LIMIT = 10 * 1024 * 1024
POLL = 0.05

# Run by a short-lived launcher: start the daemon in a session of its own and record its pid. The
# launcher exits at once, so the daemon's parent is the container's init, not an Airflow process.
_LAUNCH = """
import subprocess, sys
daemon = subprocess.Popen(sys.argv[2:], start_new_session=True)
with open(sys.argv[1], "w") as pid_file:
    pid_file.write(f"{daemon.pid}\\n")
"""


# Airflow's settings that name this backend: where one holds it, that environment configured Airflow.
BACKEND_SETTINGS = ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__WORKERS__SECRETS_BACKEND")
BACKEND_CLASS = "sidecar.backend.SidecarSecretsBackend"


class StartError(Exception):
    """The daemon could not be started, or did not come up; the message says where to look."""


def log_path(unix_socket: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(unix_socket)), "sidecar.log")


def daemon_command(autostart: bool | str) -> list[str]:
    """The command that runs the daemon: a given executable, the Astro recipe's venv, or this Python."""
    if isinstance(autostart, str):
        return [autostart]
    if os.access(RECIPE_COMMAND, os.X_OK):
        return [RECIPE_COMMAND]
    if all(importlib.util.find_spec(name) is not None for name in ("aiohttp", "aiobotocore", "cachetools")):
        return [sys.executable, "-m", "sidecar"]
    raise StartError(
        f"backend_kwargs 'autostart' found no daemon to start: install it in {RECIPE_VENV} (see "
        "deploy/astro/Dockerfile.snippet) or install 'airflow-secrets-sidecar[daemon]' in this environment, "
        "or set 'autostart' to the path of an airflow-secrets-sidecar executable"
    )


def daemon_environment(proc: str = "/proc") -> dict[str, str]:
    """The environment the daemon starts with: the container's, not the calling process's.

    Whichever process looks up first starts the daemon, which then serves every later one for the
    container's life: a task that set AWS_* or SIDECAR_* for its own work must lend it nothing. The
    container's environment is PID 1's (tini's, Astro's init), taken when this user may read it and
    it is the one that set Airflow to use this backend; elsewhere (a host's init) this process's."""
    try:
        with open(f"{proc}/1/environ", "rb") as handle:
            items = handle.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    container = dict(os.fsdecode(item).split("=", 1) for item in items if b"=" in item)
    if not any(container.get(name) == BACKEND_CLASS for name in BACKEND_SETTINGS):
        return dict(os.environ)
    return container


def start(endpoint: Endpoint, autostart: bool | str) -> int | None:
    """`ensure_running` for the backend's endpoint. The daemon gets the endpoint's token, and the other
    token variable is dropped: the container's environment may name another token, which the daemon
    would take instead (it prefers SIDECAR_TOKEN_FILE) and then refuse the backend's."""
    assert endpoint.unix_socket
    env = daemon_environment()
    if endpoint.token_file:
        env[TOKEN_FILE_ENV] = endpoint.token_file
        env.pop(TOKEN_ENV, None)
    else:
        env[TOKEN_ENV] = endpoint.token
        env.pop(TOKEN_FILE_ENV, None)
    return ensure_running(endpoint.unix_socket, daemon_command(autostart), env)


def ensure_running(unix_socket: str, command: list[str], env: dict[str, str], wait: float = START_WAIT) -> int | None:
    """Return once a daemon listens on `unix_socket`, starting one if nobody does: the pid of the daemon
    this call started, None if another process did. Raises StartError."""
    directory = os.path.dirname(os.path.abspath(unix_socket))
    _private_directory(directory)
    deadline = time.monotonic() + wait
    with _locked(unix_socket + ".lock", deadline):
        if listens(unix_socket):  # a racing process started it while we waited for the lock
            return None
        token_file = env.get(TOKEN_FILE_ENV)
        if token_file == token_path(unix_socket) and not os.path.exists(token_file):
            _write_private(token_file, secrets.token_urlsafe(32) + "\n")
        pid = _launch(unix_socket, command, env)
        while not listens(unix_socket):
            if not _running(pid):
                raise StartError(f"the sidecar daemon (pid {pid}) exited at start{_log_tail(unix_socket)}")
            if time.monotonic() >= deadline:
                raise StartError(
                    f"the sidecar daemon (pid {pid}) started but did not listen on {unix_socket} "
                    f"within {wait:g}s{_log_tail(unix_socket)}"
                )
            time.sleep(POLL)
        return pid


def _private_directory(directory: str) -> None:
    """Make the directory 0700 if missing; refuse one that another user could write to."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(directory, mode=0o700)
    info = os.stat(directory)
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StartError(
            f"backend_kwargs 'autostart': {directory} (the unix_socket's directory) must belong to this user "
            f"(uid {os.geteuid()}) and be writable by nobody else, or another user could stand in for the "
            "daemon: point 'unix_socket' into a directory of its own, such as /tmp/airflow-secrets-sidecar/sidecar.sock"
        )


@contextlib.contextmanager
def _locked(path: str, deadline: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StartError(f"another process held {path} for too long while starting the sidecar") from None
                time.sleep(POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def _launch(unix_socket: str, command: list[str], env: dict[str, str]) -> int:
    log = log_path(unix_socket)
    pid_file = os.path.join(os.path.dirname(log), "sidecar.pid")
    with contextlib.suppress(FileNotFoundError):
        if os.stat(log).st_size > LOG_LIMIT:
            os.replace(log, log + ".1")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.write(log_fd, f"{stamp} autostart: process {os.getpid()} starts the sidecar on {unix_socket}\n".encode())
        launcher = subprocess.run(
            [sys.executable, "-c", _LAUNCH, pid_file, *command, "serve", "--unix-socket", unix_socket],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=env,
            cwd="/",
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError(f"cannot start the sidecar daemon ({type(exc).__name__}: {exc})") from None
    finally:
        os.close(log_fd)
    if launcher.returncode != 0:
        raise StartError(f"cannot start the sidecar daemon {command[0]!r}{_log_tail(unix_socket)}")
    with open(pid_file, encoding="ascii") as handle:
        return int(handle.read())


def _running(pid: int) -> bool:
    """False once the process has exited, also while it is an unreaped zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _log_tail(unix_socket: str, lines: int = 3) -> str:
    """The end of the daemon's log, for an error message. The daemon never logs a secret's value."""
    log = log_path(unix_socket)
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            tail = handle.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
    except OSError:
        return f"; its log: {log}"
    return f"; its log {log} ends with: " + " | ".join(tail)


def _write_private(path: str, text: str) -> None:
    """Write a 0600 file atomically: readers never see it empty or half written."""
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def listens(unix_socket: str) -> bool:
    """True when a process accepts connections on the socket. A bare connect, not a request: the
    daemon listens only once it can answer, and a connect needs no token nor a connection kept."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(unix_socket)
    except OSError:
        return False
    finally:
        probe.close()
    return True
