"""The command line end to end: real `python -m sidecar` processes, real sockets, real signals.

Readiness is polled with short, bounded connects; nothing sleeps to wait for a TTL. Every
process is killed in a fixture's teardown, whatever the test did.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import sidecar
from tests.support import REGION, TOKEN, AwsEmulator, OpenDaemonThread, free_port, make_settings, refused

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


def sidecar_env(**settings: str) -> dict[str, str]:
    """This process's environment (the AWS test credentials included) without stray SIDECAR_* values."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIDECAR_")}
    env.update(settings)
    return env


def emulator_kwargs(endpoint: str) -> str:
    return json.dumps({"region_name": REGION, "endpoint_url": endpoint})


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT,
        env=env if env is not None else sidecar_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def get(connection: http.client.HTTPConnection, path: str, token: str | None = TOKEN) -> Response:
    headers = {"X-Sidecar-Token": token} if token is not None else {}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return Response(response.status, dict(response.headers), json.loads(response.read()))
    finally:
        connection.close()


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: IO[str]

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self) -> int:
        return self.popen.wait(timeout=EXIT_TIMEOUT)

    def wait_until_healthy(self, connect: Callable[[], http.client.HTTPConnection]) -> None:
        """Poll /healthz with short connects until it answers 200; bounded."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"the daemon exited with {self.popen.returncode}:\n{self.output()}")
            try:
                connection = connect()
                connection.timeout = 0.5
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                ok = response.status == 200 and json.loads(response.read()) == {"status": "ok"}
                connection.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.05)  # polling for readiness, not waiting on a TTL
        pytest.fail(f"the daemon did not answer /healthz within {STARTUP_TIMEOUT}s:\n{self.output()}")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """`spawn("serve", env=...)`: a `python -m sidecar` process, killed at teardown if still alive."""
    started: list[Process] = []

    def start(*args: str, env: dict[str, str]) -> Process:
        log = open(tmp_path / f"process-{len(started)}.log", "w+")  # noqa: SIM115 (closed at teardown)
        popen = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        process = Process(popen, log)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.wait(timeout=EXIT_TIMEOUT)
        process.log.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: a Unix socket path must fit in about 100 bytes."""
    path = tempfile.mkdtemp(prefix="sc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_tcp_daemon(spawn: Callable[..., Process], **settings: str) -> tuple[Process, int]:
    port = free_port()
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_PORT=str(port), **settings)
    process = spawn("serve", env=env)
    process.wait_until_healthy(lambda: http.client.HTTPConnection("127.0.0.1", port))
    return process, port


# --- --version and configuration errors ---


def test_version_prints_the_package_version():
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.split() == ["airflow-secrets-sidecar", sidecar.__version__]


@pytest.mark.parametrize(
    ("args", "settings", "named"),
    [
        ((), {"SIDECAR_TOKEN": TOKEN, "SIDECAR_TTL": "abc"}, ["--ttl", "SIDECAR_TTL"]),
        (("--ttl", "abc"), {"SIDECAR_TOKEN": TOKEN}, ["--ttl", "SIDECAR_TTL"]),
        ((), {}, ["SIDECAR_TOKEN", "SIDECAR_TOKEN_FILE"]),
        ((), {"SIDECAR_TOKEN": TOKEN, "SIDECAR_HOST": "0.0.0.0"}, ["SIDECAR_HOST", "SIDECAR_ALLOW_REMOTE"]),
        ((), {"SIDECAR_TOKEN": TOKEN, "SIDECAR_EVENT_LOOP": "trio"}, ["--event-loop", "SIDECAR_EVENT_LOOP"]),
    ],
)
def test_serve_with_an_invalid_setting_exits_2_with_one_line_naming_it(args, settings, named):
    result = run_cli("serve", *args, env=sidecar_env(**settings))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("airflow-secrets-sidecar: configuration error: ")
    for name in named:
        assert name in lines[0]
    assert result.stdout == ""


def test_uvloop_asked_for_but_not_installed_is_a_configuration_error():
    as_if_missing = "import sys; sys.modules['uvloop'] = None; from sidecar.cli import main; sys.exit(main(['serve']))"
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_EVENT_LOOP="uvloop", SIDECAR_PORT=str(free_port()))
    result = subprocess.run(
        [sys.executable, "-c", as_if_missing], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "airflow-secrets-sidecar: configuration error: SIDECAR_EVENT_LOOP=uvloop needs uvloop: "
        "pip install 'airflow-secrets-sidecar[daemon,uvloop]'"
    ]


# --- serve over TCP: a request, then signals ---


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_serve_answers_then_exits_0_on_sigterm(aws: AwsEmulator, spawn, event_loop):
    aws.put("airflow/variables/x", "hello")
    process, port = start_tcp_daemon(
        spawn, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint), SIDECAR_EVENT_LOOP=event_loop
    )

    found = get(http.client.HTTPConnection("127.0.0.1", port, timeout=10), "/v1/variables/x")
    assert (found.status, found.body) == (200, {"value": "hello"})
    assert found.headers["X-Cache"] in ("hit", "miss")
    missing_token = get(http.client.HTTPConnection("127.0.0.1", port, timeout=10), "/v1/variables/x", token=None)
    assert (missing_token.status, missing_token.body["error"]) == (401, "unauthorized")

    process.signal(signal.SIGTERM)

    assert process.wait() == 0, process.output()
    assert refused(port)
    output = process.output()
    assert "Traceback" not in output
    assert TOKEN not in output and "hello" not in output


def test_sigint_exits_0(aws: AwsEmulator, spawn):
    process, port = start_tcp_daemon(
        spawn, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint), SIDECAR_WARMUP="false"
    )

    process.signal(signal.SIGINT)

    assert process.wait() == 0, process.output()
    assert "Traceback" not in process.output()
    assert refused(port)


class BlackHole:
    """A TCP endpoint that accepts connections and never answers: AWS hanging mid-request."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)  # so the accepting thread notices `close` promptly
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self._closed = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)
            self.accepted.set()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.listener.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_sigterm_lets_a_request_in_flight_finish(spawn, black_hole: BlackHole):
    process, port = start_tcp_daemon(
        spawn,
        SIDECAR_BACKEND_KWARGS=emulator_kwargs(f"http://127.0.0.1:{black_hole.port}"),
        SIDECAR_REQUEST_TIMEOUT="2",
        SIDECAR_WARMUP="false",
    )
    outcome: dict[str, Any] = {}

    def in_flight() -> None:
        try:
            outcome["response"] = get(http.client.HTTPConnection("127.0.0.1", port, timeout=15), "/v1/variables/x")
        except Exception as exc:  # a reset or a timeout: recorded, asserted below
            outcome["error"] = exc

    request = threading.Thread(target=in_flight, daemon=True)
    request.start()
    assert black_hole.accepted.wait(timeout=10), "the daemon never called the (hanging) AWS endpoint"

    process.signal(signal.SIGTERM)

    # The listener closes at once, while the request is still waiting on AWS.
    deadline = time.monotonic() + 5
    while not refused(port) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert refused(port)
    assert request.is_alive(), "the request ended before the request timeout"

    request.join(timeout=15)
    assert not request.is_alive()
    assert "error" not in outcome, f"the in-flight request failed: {outcome.get('error')!r}"
    response: Response = outcome["response"]
    assert response.status == 503
    assert response.body["error"] == "timeout"
    assert process.wait() == 0, process.output()
    assert refused(port)


# --- serve on a Unix socket ---


def test_serve_on_a_unix_socket(aws: AwsEmulator, spawn, short_dir):
    aws.put("airflow/variables/x", "over-unix")
    path = os.path.join(short_dir, "sidecar.sock")
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint))
    process = spawn("serve", "--unix-socket", path, env=env)
    process.wait_until_healthy(lambda: UnixHTTPConnection(path))

    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    found = get(UnixHTTPConnection(path), "/v1/variables/x")
    assert (found.status, found.body) == (200, {"value": "over-unix"})

    process.signal(signal.SIGTERM)

    assert process.wait() == 0, process.output()
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(aws: AwsEmulator, spawn, short_dir):
    path = os.path.join(short_dir, "sidecar.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nobody listens on it
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    env = sidecar_env(
        SIDECAR_TOKEN=TOKEN,
        SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint),
        SIDECAR_UNIX_SOCKET=path,
        SIDECAR_WARMUP="false",
    )
    process = spawn("serve", env=env)
    process.wait_until_healthy(lambda: UnixHTTPConnection(path))

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    missing = get(UnixHTTPConnection(path), "/v1/variables/absent")
    assert (missing.status, missing.body["error"]) == (404, "not_found")

    process.signal(signal.SIGTERM)
    assert process.wait() == 0, process.output()


def test_a_regular_file_at_the_socket_path_is_refused(aws: AwsEmulator, short_dir):
    path = os.path.join(short_dir, "sidecar.sock")
    Path(path).write_text("not a socket\n")
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint))

    result = run_cli("serve", "--unix-socket", path, env=env)

    assert result.returncode != 0
    assert "--unix-socket / SIDECAR_UNIX_SOCKET" in result.stderr
    assert "not a socket" in result.stderr
    assert repr(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_socket_another_process_listens_on_is_refused(aws: AwsEmulator, short_dir):
    path = os.path.join(short_dir, "sidecar.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)
        env = sidecar_env(
            SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint), SIDECAR_UNIX_SOCKET=path
        )

        result = run_cli("serve", env=env)

    assert result.returncode != 0
    assert "--unix-socket / SIDECAR_UNIX_SOCKET" in result.stderr
    assert "another process listens" in result.stderr
    assert "Traceback" not in result.stderr


# --- check and get ---


def test_check_prints_the_count_of_each_prefix(aws: AwsEmulator):
    aws.put("airflow/variables/a", "1")
    aws.put("airflow/variables/b", "2")
    aws.put("airflow/connections/db", "postgresql://u:p@h/s")
    aws.put("elsewhere/c", "3")
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint))

    result = run_cli("check", env=env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("configuration ok: source secretsmanager, ttl 1800s, negative ttl 600s")
    assert lines[1:] == [
        "airflow/config/*: 0 secrets",
        "airflow/connections/*: 1 secrets",
        "airflow/variables/*: 2 secrets",
    ]
    assert "postgresql" not in result.stdout + result.stderr


def test_check_exits_1_when_listing_is_denied(aws: AwsEmulator):
    aws.fail["ListSecrets"] = "AccessDeniedException"
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint))

    result = run_cli("check", env=env)

    assert result.returncode == 1
    assert "AccessDeniedException" in result.stdout
    assert "IAM" in result.stdout


def test_get_prints_the_value_and_exits_1_for_a_missing_key(aws: AwsEmulator, spawn):
    aws.put("airflow/variables/greeting", "hello world")
    _, port = start_tcp_daemon(spawn, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint))
    url = f"http://127.0.0.1:{port}"
    env = sidecar_env(SIDECAR_TOKEN=TOKEN)

    found = run_cli("get", "variables", "greeting", "--url", url, env=env)
    assert found.returncode == 0, found.stderr
    assert found.stdout == "hello world\n"

    missing = run_cli("get", "variables", "absent", "--url", url, env=env)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "404" in missing.stderr and "not_found" in missing.stderr

    wrong_token = run_cli("get", "variables", "greeting", "--url", url, env=sidecar_env(SIDECAR_TOKEN="x" * 20))
    assert wrong_token.returncode == 2
    assert wrong_token.stdout == ""
    assert "401" in wrong_token.stderr


def test_probe_checks_liveness_and_readiness_of_the_local_daemon(aws):
    with OpenDaemonThread(make_settings(aws, warmup="true")) as running:
        _host, port = running.address
        environ = {**os.environ, "SIDECAR_PORT": str(port)}

        def probe(*flags: str) -> int:
            return subprocess.run(
                [sys.executable, "-m", "sidecar", "probe", *flags], env=environ, timeout=30
            ).returncode

        assert probe() == 0
        assert probe("--ready") == 1  # warm-up not run yet
        running.run(running.daemon.warmup.warm_up())
        assert probe("--ready") == 0
    assert probe() == 1  # nothing listens any more


def test_the_daemon_process_reads_aws_without_importing_httpx(aws):
    """httpx is installed here (Airflow needs it); the daemon's process must not load it (unused, it costs memory)."""
    aws.put("airflow/variables/v", "x")
    probe = f"""
import asyncio, importlib.util, json, sys
assert importlib.util.find_spec("httpx") is not None, "httpx is not installed: this test proves nothing"
from sidecar.cli import skip_unused_imports
skip_unused_imports()
from sidecar.daemon.sources.aws import open_client
from tests.support import make_settings
async def main():
    settings = make_settings({aws.endpoint!r})
    async with open_client("secretsmanager", settings.store, 4) as client:
        got = await client.get_secret_value(SecretId="airflow/variables/v")
    assert got["SecretString"] == "x"
asyncio.run(main())
unused = ("httpx", "httpx2", "rich", "pygments")
print(json.dumps(sorted(name for name, module in sys.modules.items() if module and name.split(".")[0] in unused)))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


# --- configuration the AWS client refuses: one line, exit 2, for check and serve alike ---


def _without_region(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in ("AWS_REGION", "AWS_DEFAULT_REGION")}


@pytest.mark.parametrize(
    ("kwargs", "source", "named"),
    [
        ({}, "secretsmanager", ["region_name", "SIDECAR_BACKEND_KWARGS", "AWS_REGION"]),
        ({"profile_name": "no-such-profile"}, "secretsmanager", ["profile_name", "'no-such-profile'"]),
        ({"api_version": "2017-10-17"}, "ssm", ["api_version", "'2017-10-17'", "ssm", "2014-11-06"]),
    ],
    ids=["no region", "unknown profile", "another service's api_version"],
)
@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_configuration_the_aws_client_refuses_is_one_line_and_exit_2(
    aws: AwsEmulator, command, kwargs, source, named
):
    kwargs = {"endpoint_url": aws.endpoint, **kwargs}
    if "profile_name" in kwargs or "api_version" in kwargs:
        kwargs["region_name"] = REGION
    env = sidecar_env(
        SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=json.dumps(kwargs), SIDECAR_SOURCE=source, SIDECAR_PORT="0"
    )

    result = run_cli(command, env=_without_region(env))

    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("airflow-secrets-sidecar: configuration error: ")
    for name in named:
        assert name in lines[0]
    assert "configuration ok" not in result.stdout


# --- where the daemon cannot listen ---


@pytest.mark.parametrize("where", ["a missing directory", "a path too long"])
def test_a_socket_path_the_daemon_cannot_listen_on_names_the_setting_and_the_path(aws: AwsEmulator, short_dir, where):
    if where == "a missing directory":
        path = os.path.join(short_dir, "no-such-dir", "sidecar.sock")
    else:
        path = os.path.join(short_dir, "x" * 120 + ".sock")
    env = sidecar_env(SIDECAR_TOKEN=TOKEN, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint), SIDECAR_WARMUP="false")

    result = run_cli("serve", "--unix-socket", path, env=env)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--unix-socket / SIDECAR_UNIX_SOCKET" in lines[0]
    assert repr(path) in lines[0]
    assert "SIDECAR_PORT" not in lines[0]


# --- a Kubernetes service link in SIDECAR_PORT ---


def test_a_kubernetes_service_link_in_sidecar_port_is_ignored_with_a_warning(aws: AwsEmulator, spawn):
    """Kubernetes sets SIDECAR_PORT=tcp://<ip>:<port> for a Service named `sidecar`: the default port it is."""
    host = f"127.0.0.{random.randrange(2, 250)}"  # the default port, on an address of this test's own
    link = "tcp://10.0.0.5:2779"
    env = sidecar_env(
        SIDECAR_TOKEN=TOKEN,
        SIDECAR_PORT=link,
        SIDECAR_HOST=host,
        SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint),
        SIDECAR_WARMUP="false",
    )
    process = spawn("serve", env=env)
    process.wait_until_healthy(lambda: http.client.HTTPConnection(host, sidecar.DEFAULT_PORT))

    probe = run_cli("probe", env=env)

    assert probe.returncode == 0, probe.stderr
    assert probe.stderr.count("SIDECAR_PORT") == 1 and link in probe.stderr
    assert "Kubernetes" in probe.stderr
    daemon_log = process.output()
    assert daemon_log.count("SIDECAR_PORT") == 1 and "WARNING" in daemon_log
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_a_service_link_given_as_the_port_flag_is_still_an_error():
    result = run_cli("serve", "--port", "tcp://10.0.0.5:2779", env=sidecar_env(SIDECAR_TOKEN=TOKEN))

    assert result.returncode == 2
    assert "--port / SIDECAR_PORT" in result.stderr
    assert "'tcp://10.0.0.5:2779'" in result.stderr


# --- how `get` gets its token ---


def test_get_help_says_where_its_token_comes_from():
    result = run_cli("get", "--help")

    assert result.returncode == 0
    assert "SIDECAR_TOKEN_FILE" in result.stdout and "SIDECAR_TOKEN" in result.stdout.replace("SIDECAR_TOKEN_FILE", "")


def test_get_refused_for_its_token_says_how_to_give_it_one(aws: AwsEmulator, spawn):
    _, port = start_tcp_daemon(spawn, SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint), SIDECAR_WARMUP="false")

    result = run_cli("get", "variables", "v", "--url", f"http://127.0.0.1:{port}", env=sidecar_env())

    assert result.returncode == 2
    assert "401" in result.stderr
    assert "SIDECAR_TOKEN_FILE" in result.stderr and "SIDECAR_TOKEN=" in result.stderr


def test_get_of_a_404_from_another_server_is_an_error_not_a_miss():
    from tests.test_backend import ForeignServer

    server = ForeignServer(b"<html>404</html>", {"Content-Type": "text/html"})
    try:
        result = run_cli("get", "variables", "v", "--url", server.url, env=sidecar_env(SIDECAR_TOKEN=TOKEN))
    finally:
        server.close()

    assert result.returncode == 2
    assert server.url in result.stderr and "not as the sidecar does" in result.stderr


# --- the demo ---


def test_the_demo_prints_a_get_line_that_works_as_printed(spawn):
    executable = Path(sys.executable).parent / "airflow-secrets-sidecar"  # what `make demo` runs
    port = free_port()
    popen = subprocess.Popen(
        [str(executable), "demo", "--port", str(port)],
        cwd=ROOT,
        env=sidecar_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = _banner_of(popen)
        seeded = [line.strip() for line in banner if line.strip().startswith("airflow/")]
        assert len(seeded) == 6 and "airflow/variables/greeting" in seeded[0]
        get_line = next(line.strip() for line in banner if " get variables greeting " in line)
        assert "SIDECAR_TOKEN=" in get_line

        done = subprocess.run(
            get_line, shell=True, cwd=ROOT, env=sidecar_env(), capture_output=True, text=True, timeout=30
        )

        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello from AWS Secrets Manager, via the sidecar\n"
        text = "".join(banner)
        assert "AIRFLOW__SECRETS__BACKEND=sidecar.backend.SidecarSecretsBackend" in text
        assert "[secrets]" in text and "docs/" in text
    finally:
        popen.send_signal(signal.SIGINT)
        try:
            popen.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        assert popen.stdout is not None
        popen.stdout.close()


def _banner_of(popen: subprocess.Popen[str]) -> list[str]:
    """The demo's banner: its lines up to the last one, which says how to stop it; bounded by a deadline."""
    assert popen.stdout is not None
    lines: list[str] = []
    timer = threading.Timer(STARTUP_TIMEOUT * 3, popen.kill)  # a demo that never prints ends the read
    timer.start()
    try:
        for line in popen.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                return lines
    finally:
        timer.cancel()
    pytest.fail(f"the demo ended without its banner:\n{''.join(lines)}")
