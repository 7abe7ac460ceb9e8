"""`autostart`: the backend starts the daemon when none answers (Astro Hosted: nothing but Airflow
may be started). Real Airflow processes, a real daemon process, moto in server mode; no daemon runs
before each test, and each test kills the one it caused."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import autostart
from sidecar.backend import SidecarError, SidecarSecretsBackend, SidecarUnreachable
from tests.support import REGION, AwsEmulator, airflow_env

BACKEND = "sidecar.backend.SidecarSecretsBackend"

# A fresh Airflow process: import Airflow, say so, wait for the go (so that both processes look up
# within a millisecond of each other), look up, then report what it got and what it left behind.
RACER = r"""
import json, os, sys, time
from pathlib import Path
from airflow.sdk import Variable

here = Path(sys.argv[1])
(here / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 60
while not (here / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go within 60 s")
    time.sleep(0.005)
value = Variable.get("greeting")
children = [p for t in Path("/proc/self/task").iterdir() for p in (t / "children").read_text().split()]
print(json.dumps({"value": value, "pid": os.getpid(), "children": children}))
"""


def _daemons(unix_socket: str) -> list[int]:
    """Pids of the processes serving this socket, from their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and unix_socket.encode() in argv and entry.name.isdigit():
            found.append(int(entry.name))
    return found


def _wait_until_gone(pid: int, deadline_s: float = 15) -> None:
    deadline = time.monotonic() + deadline_s
    while autostart._running(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs after {deadline_s}s"
        time.sleep(0.05)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the socket lives; every daemon started on it is stopped afterwards."""
    directory = tmp_path / "run"
    yield directory
    for pid in _daemons(str(directory / "s.sock")):
        os.kill(pid, signal.SIGTERM)
        _wait_until_gone(pid)


@pytest.fixture
def daemon_env(aws: AwsEmulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The daemon's settings, as the Airflow process's environment carries them."""
    settings = {
        "SIDECAR_BACKEND_KWARGS": json.dumps({"region_name": REGION, "endpoint_url": aws.endpoint}),
        "SIDECAR_LOG_LEVEL": "debug",
    }
    for name in ("SIDECAR_TOKEN", "SIDECAR_TOKEN_FILE", "SIDECAR_UNIX_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return settings


def _backend(run_dir: Path, **kwargs: Any) -> SidecarSecretsBackend:
    """Each lookup asks the daemon (local_ttl 0): these tests are about which daemon answers."""
    return SidecarSecretsBackend(unix_socket=str(run_dir / "s.sock"), autostart=True, local_ttl=0, **kwargs)


def test_two_fresh_airflow_processes_race_and_share_one_daemon(aws, daemon_env, run_dir, tmp_path):
    aws.put("airflow/variables/greeting", "hello from aws")
    unix_socket = str(run_dir / "s.sock")
    env = airflow_env(
        tmp_path,
        AIRFLOW__SECRETS__BACKEND=BACKEND,
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"autostart": True, "unix_socket": unix_socket}),
        **daemon_env,
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path)], env=env, cwd=tmp_path, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2:
        assert time.monotonic() < deadline, "the Airflow processes did not get ready"
        assert all(racer.poll() is None for racer in racers), "an Airflow process died before its lookup"
        time.sleep(0.02)
    assert _daemons(unix_socket) == []  # nothing runs until a lookup asks
    (tmp_path / "go").touch()
    reports = []
    for racer in racers:
        stdout, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0, (run_dir / "sidecar.log").read_text()
        reports.append(json.loads(stdout.decode().strip().splitlines()[-1]))

    assert [report["value"] for report in reports] == ["hello from aws"] * 2
    # One daemon, started by one of them, outliving both, and a child of neither: no zombie to leave.
    daemons = _daemons(unix_socket)
    assert len(daemons) == 1, daemons
    assert int((run_dir / "sidecar.pid").read_text()) == daemons[0]
    assert all(report["children"] == [] for report in reports)
    assert autostart.listens(unix_socket)
    assert (run_dir / "sidecar.log").read_text().count("autostart: process") == 1
    # The generated token and its directory: this user's only.
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "token").stat().st_mode) == 0o600


def test_the_daemon_outlives_its_starter_and_a_crashed_one_is_started_again(aws, daemon_env, run_dir, caplog):
    caplog.set_level(logging.INFO, logger="sidecar.backend")
    aws.put("airflow/variables/greeting", "v1")
    assert _backend(run_dir).get_variable("greeting") == "v1"
    first = _daemons(str(run_dir / "s.sock"))
    assert len(first) == 1
    # Airflow's task log says where the daemon's own log is.
    assert f"started the sidecar daemon (pid {first[0]})" in caplog.text and str(run_dir / "sidecar.log") in caplog.text
    os.kill(first[0], signal.SIGKILL)
    _wait_until_gone(first[0])

    # A new daemon, with an empty cache: it sees the new value at once.
    aws.client().put_secret_value(SecretId="airflow/variables/greeting", SecretString="v2")
    assert _backend(run_dir).get_variable("greeting") == "v2"
    second = _daemons(str(run_dir / "s.sock"))
    assert len(second) == 1 and second != first


def test_a_daemon_that_cannot_start_gives_a_clear_error_naming_its_log(aws, daemon_env, run_dir, monkeypatch):
    monkeypatch.setenv("SIDECAR_BACKEND_KWARGS", '{"region_name": "x", "password": "hunter2-secret"}')
    backend = _backend(run_dir)
    with pytest.raises(SidecarUnreachable) as raised:
        backend.get_variable("greeting")
    message = str(raised.value)
    assert "exited at start" in message and str(run_dir / "sidecar.log") in message
    assert "SIDECAR_BACKEND_KWARGS" in message and "['password']" in message
    assert "hunter2" not in message  # the daemon never echoes the JSON
    # Within the next seconds the same error comes back at once, with no second start.
    started = time.monotonic()
    with pytest.raises(SidecarUnreachable, match="exited at start"):
        backend.get_variable("greeting")
    assert time.monotonic() - started < 1
    assert (run_dir / "sidecar.log").read_text().count("autostart: process") == 1


def test_a_directory_others_can_write_is_refused(aws, daemon_env, run_dir):
    run_dir.mkdir(mode=0o700)
    run_dir.chmod(0o777)  # anyone could plant a socket there and collect the token
    with pytest.raises(SidecarError, match="writable by nobody else"):
        _backend(run_dir).get_variable("greeting")
    assert not (run_dir / "sidecar.log").exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"autostart": True}, "needs 'unix_socket'"),
        ({"autostart": "yes", "unix_socket": "/tmp/x/s.sock"}, "must be true, false or the absolute path"),
        ({"autostart": 1, "unix_socket": "/tmp/x/s.sock"}, "must be true, false or the absolute path"),
    ],
)
def test_bad_autostart_settings_fail_when_airflow_builds_the_backend(kwargs, error, daemon_env):
    with pytest.raises(SidecarError, match=error):
        SidecarSecretsBackend(**kwargs)


def test_a_configured_token_file_is_the_daemons_too(aws, daemon_env, run_dir, tmp_path):
    aws.put("airflow/variables/greeting", "hello")
    token_file = tmp_path / "my-token"
    token_file.write_text("t" * 32)
    assert _backend(run_dir, token_file=str(token_file)).get_variable("greeting") == "hello"
    assert not (run_dir / "token").exists()
    assert _backend(run_dir, token="t" * 32).get_variable("greeting") == "hello"
    with pytest.raises(SidecarError, match="refused the token"):
        _backend(run_dir, token="u" * 32).get_variable("greeting")


def test_a_token_kwarg_is_the_daemons_even_where_the_environment_names_a_token_file(
    aws, daemon_env, run_dir, tmp_path, monkeypatch
):
    """The daemon prefers SIDECAR_TOKEN_FILE: started with the backend's `token`, it must not get one."""
    aws.put("airflow/variables/greeting", "hello")
    other = tmp_path / "someone-elses-token"
    other.write_text("o" * 32)
    monkeypatch.setenv("SIDECAR_TOKEN_FILE", str(other))
    assert _backend(run_dir, token="t" * 32).get_variable("greeting") == "hello"


def test_the_cli_finds_an_autostarted_daemon_and_its_token(aws, daemon_env, run_dir):
    """What the README's troubleshooting section tells an operator to run inside the container."""
    aws.put("airflow/variables/greeting", "hello")
    unix_socket = str(run_dir / "s.sock")
    assert _backend(run_dir).get_variable("greeting") == "hello"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SIDECAR_UNIX_SOCKET": unix_socket}
        return subprocess.run([sys.executable, "-m", "sidecar", *args], env=env, capture_output=True, text=True)

    found = cli("get", "variables", "greeting")
    assert (found.returncode, found.stdout) == (0, "hello\n"), found.stderr
    missing = cli("get", "variables", "absent")
    assert missing.returncode == 1
    assert "404, X-Cache: " in missing.stderr and "no secret named airflow/variables/absent" in missing.stderr
    assert cli("probe").returncode == 0


# PID 1 of a container (tini's stand-in): runs one task-like process that set its own AWS key, whose
# lookup starts the daemon, then reports the environment the daemon got and exits, ending the
# namespace as tini's exit ends a container.
CONTAINER_INIT = r"""
import json, os, subprocess, sys
from pathlib import Path
task = "from airflow.sdk import Variable; print(Variable.get('greeting'))"
env = {**os.environ, "AWS_ACCESS_KEY_ID": "task-set-this", "SIDECAR_LOG_LEVEL": "error"}
value = subprocess.run([sys.executable, "-c", task], env=env, capture_output=True, text=True, check=True).stdout
pid = int((Path(sys.argv[1]) / "sidecar.pid").read_text())
daemon = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
report = {"value": value.strip().splitlines()[-1], "pid": os.getpid(), "daemon": {k: daemon.get(k) for k in env}}
print(json.dumps(report))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="a PID namespace needs root")
def test_the_daemon_takes_the_containers_environment_not_the_tasks_that_started_it(aws, daemon_env, run_dir, tmp_path):
    aws.put("airflow/variables/greeting", "signed as the container")
    container = airflow_env(
        tmp_path,
        AIRFLOW__SECRETS__BACKEND=BACKEND,
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"autostart": True, "unix_socket": str(run_dir / "s.sock")}),
        AWS_ACCESS_KEY_ID="the-containers-key",
        SIDECAR_LOG_LEVEL="info",
        **{k: v for k, v in daemon_env.items() if k != "SIDECAR_LOG_LEVEL"},
    )
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", CONTAINER_INIT, str(run_dir)]
    result = subprocess.run(command, env=container, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + (run_dir / "sidecar.log").read_text()
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["pid"] == 1 and report["value"] == "signed as the container"
    assert report["daemon"]["AWS_ACCESS_KEY_ID"] == "the-containers-key"
    assert report["daemon"]["SIDECAR_LOG_LEVEL"] == "info"
    assert set(aws.access_keys) == {"the-containers-key"}  # every call to AWS, in the container's name
    assert _daemons(str(run_dir / "s.sock")) == []  # PID 1 gone: the kernel ended the daemon with it
