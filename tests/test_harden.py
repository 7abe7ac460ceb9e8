"""SIDECAR_HARDEN, seen from outside as an attacker of the same user would try: a daemon started as
an unprivileged user (as root: `setpriv` to nobody) writes no core file, refuses a `ptrace` attach by
its own user, and its /proc files (environ: an autostarted daemon's token) become root's. The same
for a daemon autostarted by the backend's code. With SIDECAR_HARDEN=false the attach succeeds."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REGION, REPO, TOKEN, airflow_env, free_port

if sys.platform != "linux":
    pytest.skip("PR_SET_DUMPABLE is Linux's", allow_module_level=True)

# Root runs the daemon, and the attacker, as nobody; anyone else is unprivileged already. Both keep
# CAP_DAC_READ_SEARCH, and nothing else, because pyenv's interpreters live in root's home: the
# attacker holds every capability the daemon holds, so only the dumpable flag decides the attach.
NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]
AS_USER = (
    ["setpriv", *NOBODY, "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] if os.geteuid() == 0 else []
)
PTRACE_SEIZE = 0x4206  # attaches without stopping the tracee; the tracer's exit detaches it

# Run as the daemon's own user: attach to the pid, print the errno (0: attached).
ATTACH = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
print(0 if libc.ptrace(0x4206, int(sys.argv[1]), None, None) == 0 else ctypes.get_errno())
"""


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory the daemon's user may write (its socket, its autostart files): pytest's own are root's."""
    directory = Path(tempfile.mkdtemp(prefix="sidecar-harden-"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids to stop at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def environment(aws, home: Path, **settings: str) -> dict[str, str]:
    kwargs = {"region_name": REGION, "endpoint_url": aws.endpoint}
    return airflow_env(
        home, SIDECAR_TOKEN=TOKEN, SIDECAR_WARMUP="false", SIDECAR_BACKEND_KWARGS=json.dumps(kwargs), **settings
    )


def wait_until_healthy(url: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            assert time.monotonic() < deadline, f"no daemon answered at {url} within {deadline_s} s"
            time.sleep(0.05)


def serve(aws, home: Path, started: list[int], **settings: str) -> tuple[int, str]:
    port = free_port()
    env = environment(aws, home, SIDECAR_PORT=str(port), **settings)
    process = subprocess.Popen([*AS_USER, sys.executable, "-m", "sidecar", "serve"], cwd=REPO, env=env)
    started.append(process.pid)  # setpriv execs: the pid is the daemon's
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url)
    return process.pid, url


def attach_errno(pid: int) -> int:
    result = subprocess.run(
        [*AS_USER, sys.executable, "-c", ATTACH, str(pid)], capture_output=True, text=True, timeout=30, check=True
    )
    return int(result.stdout)


def core_limit(pid: int) -> list[str]:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if "core file size" in line)
    return line.split()[4:6]  # soft, hard


def metric(url: str, name: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        return next(line for line in answer.read().decode().splitlines() if line.startswith(name + " "))


def assert_hardened(pid: int) -> None:
    assert core_limit(pid) == ["0", "0"]
    assert attach_errno(pid) == errno.EPERM
    assert Path(f"/proc/{pid}/environ").stat().st_uid == 0  # non-dumpable: its /proc files are root's


def test_a_daemon_refuses_debuggers_and_core_dumps(aws, private_dir, started):
    pid, url = serve(aws, private_dir, started)
    assert_hardened(pid)
    assert metric(url, "sidecar_hardened") == "sidecar_hardened 1.0"


def test_an_autostarted_daemon_is_hardened_too(aws, private_dir, started):
    """The backend's autostart execs the daemon, and an execve resets the flag: the daemon sets it itself."""
    socket_path = str(private_dir / "sidecar" / "sidecar.sock")  # autostart makes its directory, 0700
    launcher = (
        "import os, sys; from sidecar import autostart; "
        "print(autostart.ensure_running(sys.argv[1], [sys.executable, '-m', 'sidecar'], dict(os.environ)))"
    )
    env = environment(aws, private_dir, SIDECAR_UNIX_SOCKET=socket_path)
    result = subprocess.run(
        [*AS_USER, sys.executable, "-c", launcher, socket_path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    started.append(pid)
    assert_hardened(pid)


def test_harden_false_lets_a_debugger_attach(aws, private_dir, started):
    pid, url = serve(aws, private_dir, started, SIDECAR_HARDEN="false")
    assert attach_errno(pid) == 0
    assert core_limit(pid)[1] != "0"
    assert metric(url, "sidecar_hardened") == "sidecar_hardened 0.0"
