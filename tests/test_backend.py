"""`SidecarSecretsBackend` (the Airflow side) against a real daemon over real sockets.

The backend is synchronous and blocks, so the daemon runs in a thread with its own event loop
instead of sharing the test's loop.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sidecar import client
from sidecar.backend import TOKEN_RETRY_PAUSES, SidecarError, SidecarSecretsBackend
from sidecar.daemon.http.token import TOKEN_MISMATCH_RECHECK_SECONDS, TOKEN_RECHECK_SECONDS
from sidecar.daemon.settings import Settings
from tests.support import (
    TOKEN,
    AwsEmulator,
    FakeClock,
    OpenDaemonThread,
    connection_port,
    make_settings,
    variable_in_forked_child,
)


class Sidecar:
    """A daemon from `tests.support.OpenDaemonThread` (its own loop, in a thread) that a test may stop early."""

    def __init__(self, settings: Settings, clock: FakeClock | None = None) -> None:
        self._thread = OpenDaemonThread(settings, **({"timer": clock} if clock else {}))
        self._thread.__enter__()
        self.running = True
        self.url = self._thread.daemon.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._thread.__exit__()


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")  # in what the daemon sends back


class CountingRelay:
    """A TCP relay in front of the daemon: records each connection a client opens, and can cut them all.

    `statuses` counts the status codes of the responses the daemon sent through it.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.client_ports: list[int] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_forever, name="relay", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.client_ports)

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                client, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self._target)
            with self._lock:
                self.client_ports.append(address[1])
                self._open += [client, upstream]
            for source, sink, responses in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(source, sink, responses), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, responses: bool) -> None:
        carried = b""  # the end of the previous chunk: a status line may straddle two
        try:
            while data := source.recv(65536):
                if responses:
                    seen = carried + data
                    new = [m for m in STATUS_LINE.finditer(seen) if m.end() > len(carried)]
                    with self._lock:
                        self.statuses.update(int(m.group(1)) for m in new)
                    carried = seen[-16:]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        """Close every relayed connection, as a daemon does with an idle keep-alive connection."""
        with self._lock:
            for end in self._open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self._open.clear()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self.cut_all()


def _closed_port() -> int:
    """A port on which nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _in_thread(call: Callable[..., Any], *args: Any) -> Future[Any]:
    """Run a blocking lookup in its own thread (its own keep-alive connection); `.result(timeout)` bounds the wait."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call, *args)
    pool.shutdown(wait=False)
    return future


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)  # polling a condition


def _write_token(path: str, token: str) -> None:
    """Replace the file atomically, as a rotated Kubernetes secret volume does."""
    staging = f"{path}.new"
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(staging, path)


@pytest.fixture
def start_daemon(aws: AwsEmulator) -> Iterator[Callable[..., Sidecar]]:
    """`start_daemon(**SIDECAR_settings)`: a real daemon serving from a thread, stopped at teardown."""
    started: list[Sidecar] = []

    def start(
        backend_kwargs: dict[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        clock: FakeClock | None = None,
        **env: Any,
    ) -> Sidecar:
        env.setdefault("warmup", "false")
        sidecar = Sidecar(make_settings(endpoint or aws, backend_kwargs, **env), clock)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in reversed(started):
        sidecar.stop()


@pytest.fixture
def relays() -> Iterator[Callable[[int], CountingRelay]]:
    opened: list[CountingRelay] = []

    def open_relay(port: int) -> CountingRelay:
        relay = CountingRelay(port)
        opened.append(relay)
        return relay

    yield open_relay
    for relay in opened:
        relay.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short directory path: a Unix socket path must stay under ~100 bytes."""
    path = tempfile.mkdtemp(prefix="sc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- importing the backend ---


def test_importing_the_backend_pulls_in_no_aws_or_aiohttp_code():
    script = (
        "import json, sys, time\n"
        "started = time.perf_counter()\n"
        "import airflow.secrets\n"
        "airflow_done = time.perf_counter()\n"
        "import sidecar.backend\n"
        "done = time.perf_counter()\n"
        "heavy = ('boto3', 'botocore', 'aiobotocore', 'aiohttp')\n"
        "print(json.dumps({'loaded': sorted(m for m in sys.modules if m.split('.')[0] in heavy),\n"
        "                  'airflow_s': airflow_done - started, 'backend_s': done - airflow_done}))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])

    print(
        f"\nimport airflow.secrets: {report['airflow_s'] * 1000:.0f} ms; "
        f"then import sidecar.backend: {report['backend_s'] * 1000:.1f} ms"
    )
    assert report["loaded"] == []


# --- values ---


def test_variable_connection_and_config_values(aws, start_daemon):
    aws.put("airflow/variables/greeting", "hello")
    aws.put("airflow/connections/pg", "postgresql://user:p%40ss@db.example.com:5432/analytics")
    aws.put("airflow/connections/api", json.dumps({"engine": "http", "user": "svc", "pass": "pw", "port": 8443}))
    aws.put("airflow/config/smtp_password", "smtp-pw")
    daemon = start_daemon()
    backend = SidecarSecretsBackend(url=daemon.url, token=TOKEN)

    assert backend.get_variable("greeting") == "hello"
    assert backend.get_conn_value("pg") == "postgresql://user:p%40ss@db.example.com:5432/analytics"
    assert json.loads(backend.get_conn_value("api") or "") == {
        "login": "svc",
        "password": "pw",
        "host": None,
        "port": 8443,
        "schema": None,
        "conn_type": "http",
        "extra": None,
    }
    assert backend.get_config("smtp_password") == "smtp-pw"


def test_unicode_and_multiline_values_arrive_intact(aws, start_daemon):
    value = 'line one\nzwei: "ü" ✓\n\ttabbed'
    aws.put("airflow/variables/text", value)
    backend = SidecarSecretsBackend(url=start_daemon().url, token=TOKEN)

    assert backend.get_variable("text") == value


def test_a_key_with_the_separator_reaches_the_nested_secret(aws, start_daemon):
    aws.put("airflow/variables/team_a/setting", "nested")
    backend = SidecarSecretsBackend(url=start_daemon().url, token=TOKEN)

    assert backend.get_variable("team_a/setting") == "nested"


def test_not_found_is_none_after_asking_the_daemon(aws, start_daemon):
    backend = SidecarSecretsBackend(url=start_daemon().url, token=TOKEN)

    assert backend.get_variable("absent") is None
    assert backend.get_conn_value("absent_conn") is None
    assert backend.get_config("absent_option") is None
    assert aws.names == ["airflow/variables/absent", "airflow/connections/absent_conn", "airflow/config/absent_option"]


def test_team_name_reaches_the_daemon(aws, start_daemon):
    aws.put("airflow/variables/ops--v", "team value")
    aws.put("airflow/variables/v", "global value")
    aws.put("airflow/connections/ops--db", "postgresql://team@h/db")
    aws.put("airflow/connections/db", "postgresql://global@h/db")
    backend = SidecarSecretsBackend(url=start_daemon().url, token=TOKEN)

    assert backend.get_variable("v", team_name="ops") == "team value"
    assert backend.get_variable("v") == "global value"
    assert backend.get_variable("v", team_name="other") == "global value"
    assert backend.get_conn_value("db", team_name="ops") == "postgresql://team@h/db"
    assert backend.get_conn_value("db") == "postgresql://global@h/db"


def test_url_and_token_default_to_the_sidecar_environment_variables(aws, start_daemon, monkeypatch):
    aws.put("airflow/variables/v", "from env settings")
    daemon = start_daemon()
    monkeypatch.setenv("SIDECAR_URL", daemon.url)
    monkeypatch.setenv("SIDECAR_TOKEN", TOKEN)

    assert SidecarSecretsBackend().get_variable("v") == "from env settings"


# --- connections: keep-alive, threads, fork, reconnect ---


def test_lookups_from_one_thread_share_one_connection(aws, start_daemon, relays):
    aws.put("airflow/variables/v", "x")
    relay = relays(start_daemon().port)
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN)

    local_ports = set()
    for _ in range(50):
        assert backend.get_variable("v") == "x"
        assert backend.get_variable("absent") is None  # a 404 keeps the connection too
        local_ports.add(connection_port(backend._endpoint.address))

    assert relay.connections == 1
    assert local_ports == set(relay.client_ports)


def test_each_thread_gets_its_own_connection(aws, start_daemon, relays):
    aws.put("airflow/variables/v", "x")
    relay = relays(start_daemon().port)
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN, local_ttl=0)
    assert backend.get_variable("v") == "x"
    threads = 4
    all_running = threading.Barrier(threads)
    results: list[str | None] = []

    def worker() -> None:
        all_running.wait(timeout=10)  # every thread alive at once: none can inherit another's connection
        for _ in range(10):
            results.append(backend.get_variable("v"))
        all_running.wait(timeout=10)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=30)

    assert results == ["x"] * (threads * 10)
    assert relay.connections == 1 + threads
    assert backend.get_variable("v") == "x"
    assert relay.connections == 1 + threads  # the main thread still has its own


def test_a_forked_child_opens_its_own_connection(aws, start_daemon, relays):
    aws.put("airflow/variables/v", "x")
    relay = relays(start_daemon().port)
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN)
    assert backend.get_variable("v") == "x"

    answer, exitcode = variable_in_forked_child(backend, "v")

    assert answer == ("ok", "x")
    assert exitcode == 0
    assert relay.connections == 2
    assert backend.get_variable("v") == "x"  # the parent's connection was left alone
    assert relay.connections == 2


def test_a_connection_the_daemon_closed_is_replaced_once(aws, start_daemon, relays):
    aws.put("airflow/variables/v", "x")
    relay = relays(start_daemon().port)
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN, local_ttl=0)
    assert backend.get_variable("v") == "x"

    relay.cut_all()

    assert backend.get_variable("v") == "x"
    assert relay.connections == 2


def test_a_daemon_restarted_on_the_same_port_is_reached_again(aws, start_daemon):
    aws.put("airflow/variables/v", "x")
    first = start_daemon()
    backend = SidecarSecretsBackend(url=first.url, token=TOKEN, local_ttl=0)
    assert backend.get_variable("v") == "x"
    first_port = connection_port(backend._endpoint.address)

    first.stop()
    second = start_daemon(port=first.port)

    assert second.url == first.url
    assert backend.get_variable("v") == "x"
    assert connection_port(backend._endpoint.address) != first_port


def test_a_daemon_that_went_away_is_an_error_not_a_retry_loop(aws, start_daemon):
    aws.put("airflow/variables/v", "x")
    daemon = start_daemon()
    backend = SidecarSecretsBackend(url=daemon.url, token=TOKEN, local_ttl=0)
    assert backend.get_variable("v") == "x"

    daemon.stop()

    started = time.monotonic()
    with pytest.raises(SidecarError, match="airflow-secrets-sidecar serve"):
        backend.get_variable("v")
    assert time.monotonic() - started < 2  # one reconnect, and no startup wait once a daemon answered


# --- errors that say what to fix ---


def test_daemon_not_running_names_the_url_and_the_command():
    url = f"http://127.0.0.1:{_closed_port()}"
    backend = SidecarSecretsBackend(url=url, token=TOKEN, startup_wait=0)  # no wait for a daemon still starting

    with pytest.raises(SidecarError) as raised:
        backend.get_variable("v")

    message = str(raised.value)
    assert url in message
    assert "airflow-secrets-sidecar serve" in message
    assert "url" in message


def test_a_daemon_that_does_not_answer_times_out():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts into the backlog, never replies
    try:
        backend = SidecarSecretsBackend(url=f"http://127.0.0.1:{listener.getsockname()[1]}", token=TOKEN, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(SidecarError, match="TimeoutError"):
            backend.get_variable("v")
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_wrong_token_names_the_token_settings_and_not_the_token(aws, start_daemon):
    aws.put("airflow/variables/v", "secret value")
    wrong = "wrong-token-9876543210fedcba"
    backend = SidecarSecretsBackend(url=start_daemon().url, token=wrong)

    with pytest.raises(SidecarError) as raised:
        backend.get_variable("v")

    message = str(raised.value)
    assert "token" in message
    assert "token_file" in message
    assert wrong not in message
    assert TOKEN not in message
    assert "secret value" not in message
    assert aws.total() == 0


def test_missing_token_is_refused_the_same_way(aws, start_daemon, monkeypatch):
    monkeypatch.delenv("SIDECAR_TOKEN", raising=False)
    monkeypatch.delenv("SIDECAR_TOKEN_FILE", raising=False)
    backend = SidecarSecretsBackend(url=start_daemon().url)

    with pytest.raises(SidecarError, match="refused the token"):
        backend.get_variable("v")


def test_upstream_failure_is_an_error_naming_503(aws, start_daemon):
    daemon = start_daemon(endpoint=f"http://127.0.0.1:{_closed_port()}", request_timeout="5")
    backend = SidecarSecretsBackend(url=daemon.url, token=TOKEN)

    with pytest.raises(SidecarError) as raised:
        backend.get_variable("v")

    message = str(raised.value)
    assert "503" in message
    assert daemon.url in message
    assert "'v'" in message


def test_unknown_backend_kwarg_is_named():
    with pytest.raises(SidecarError) as raised:
        SidecarSecretsBackend(url="http://127.0.0.1:2779", token=TOKEN, variables_prefix="airflow/variables")

    message = str(raised.value)
    assert "variables_prefix" in message
    assert "SIDECAR_BACKEND_KWARGS" in message


@pytest.mark.parametrize("url", ["127.0.0.1:2779", "https://127.0.0.1:2779", "http://"])
def test_a_url_that_is_not_plain_http_is_named(url):
    with pytest.raises(SidecarError, match="'url'"):
        SidecarSecretsBackend(url=url, token=TOKEN)


# --- token files ---


def test_token_file_kwarg(aws, start_daemon, tmp_path):
    aws.put("airflow/variables/v", "x")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    backend = SidecarSecretsBackend(url=start_daemon().url, token_file=str(token_file))

    assert backend.get_variable("v") == "x"


def test_unreadable_token_file_names_the_setting(tmp_path):
    missing = str(tmp_path / "no-such-token")

    with pytest.raises(SidecarError) as raised:
        SidecarSecretsBackend(url="http://127.0.0.1:2779", token_file=missing)

    assert "token_file" in str(raised.value)
    assert missing in str(raised.value)


def test_a_rotated_token_file_is_read_again_after_a_401(aws, start_daemon, tmp_path):
    aws.put("airflow/variables/v", "x")
    token_file = str(tmp_path / "token")  # one file, mounted into the daemon and into Airflow
    _write_token(token_file, TOKEN)
    clock = FakeClock()
    daemon = start_daemon(token_file=token_file, clock=clock)
    backend = SidecarSecretsBackend(url=daemon.url, token_file=token_file)
    assert backend.get_variable("v") == "x"

    _write_token(token_file, "rotated-token-abcdefghijklmnop")
    assert backend.get_variable("v") == "x"  # the daemon has not looked at its file yet: old token still good
    clock.advance(TOKEN_RECHECK_SECONDS + 0.1)  # now it does, and takes the new token

    assert backend.get_variable("v") == "x"  # sent the old token, got 401, read the file again
    assert backend.get_variable("v") == "x"
    assert _status_with(daemon, TOKEN) == 401  # the old token really is refused now


def _status_with(daemon: Sidecar, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    try:
        connection.request("GET", "/v1/variables/v", headers={"X-Sidecar-Token": token})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_rotated_token_file_works_at_the_very_next_lookup(aws, start_daemon, tmp_path):
    aws.put("airflow/variables/v", "x")
    token_file = str(tmp_path / "token")  # one file, mounted into the daemon and into Airflow
    _write_token(token_file, TOKEN)
    daemon = start_daemon(token_file=token_file)  # the daemon's real clock
    running = SidecarSecretsBackend(url=daemon.url, token_file=token_file, local_ttl=0)
    assert running.get_variable("v") == "x"
    rotated = "rotated-token-abcdefghijklmnop"

    _write_token(token_file, rotated)

    # a process started after the swap
    fresh = SidecarSecretsBackend(url=daemon.url, token_file=token_file, local_ttl=0)
    assert fresh.get_variable("v") == "x"  # offers the new token before the daemon's periodic re-read
    assert running.get_variable("v") == "x"  # offers the old one, is refused, reads the file again
    assert _status_with(daemon, TOKEN) == 401
    assert _status_with(daemon, rotated) == 200


def test_a_token_the_daemon_has_not_taken_yet_is_offered_again_until_it_has(aws, start_daemon, relays, tmp_path):
    """The daemon re-reads its file on a mismatch at most every 0.1 s: inside that window it refuses a
    token it is about to accept, and a backend that retried once would give up."""
    aws.put("airflow/variables/v", "x")
    token_file = str(tmp_path / "token")
    _write_token(token_file, TOKEN)
    clock = FakeClock()
    daemon = start_daemon(token_file=token_file, clock=clock)
    assert _status_with(daemon, "nobody-has-this-token-0123456789") == 401  # the daemon re-read its file now
    _write_token(token_file, "rotated-token-abcdefghijklmnop")
    relay = relays(daemon.port)
    backend = SidecarSecretsBackend(url=relay.url, token_file=token_file)  # it read the new file

    lookup = _in_thread(backend.get_variable, "v")
    _wait_until(lambda: relay.statuses[401] >= 2, "the daemon to refuse the new token twice")
    clock.advance(TOKEN_MISMATCH_RECHECK_SECONDS)  # only now may the daemon look at its file again

    assert lookup.result(timeout=10) == "x"
    assert relay.statuses[200] == 1


def test_a_token_file_the_daemon_never_accepts_is_a_clear_401_after_a_few_tries(aws, start_daemon, relays, tmp_path):
    aws.put("airflow/variables/v", "secret value")
    relay = relays(start_daemon().port)
    wrong = "wrong-token-9876543210fedcba"
    token_file = str(tmp_path / "token")
    _write_token(token_file, wrong)
    backend = SidecarSecretsBackend(url=relay.url, token_file=token_file)

    with pytest.raises(SidecarError) as raised:
        _in_thread(backend.get_variable, "v").result(timeout=10)

    message = str(raised.value)
    assert "refused the token" in message and "token_file" in message
    assert wrong not in message and TOKEN not in message and "secret value" not in message
    assert relay.statuses == {401: len(TOKEN_RETRY_PAUSES) + 1}  # a few tries, then the error

    relay.statuses.clear()
    hurried = SidecarSecretsBackend(url=relay.url, token_file=token_file, timeout=0.1)
    with pytest.raises(SidecarError, match="refused the token"):
        _in_thread(hurried.get_variable, "v").result(timeout=10)
    assert 1 < relay.statuses[401] < len(TOKEN_RETRY_PAUSES) + 1  # the retries stop at the timeout


# --- a busy daemon (429) ---


def test_a_busy_daemon_is_asked_again_once_it_has_room(aws, proxy, start_daemon, relays):
    aws.put("airflow/variables/slow", "slow value")
    aws.put("airflow/variables/v", "x")
    daemon = start_daemon(endpoint=proxy.endpoint, max_requests=1)
    proxy.set("GetSecretValue", "hold")
    holder = _in_thread(SidecarSecretsBackend(url=daemon.url, token=TOKEN).get_variable, "slow")
    proxy.wait_for(lambda: proxy.held("GetSecretValue") == 1, 10, "the first lookup to wait on AWS")
    relay = relays(daemon.port)
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN)

    lookup = _in_thread(backend.get_variable, "v")
    _wait_until(lambda: relay.statuses[429] >= 1, "the daemon to answer 429 (its one request slot is taken)")
    assert not lookup.done()  # waiting for room, not failed
    proxy.set("GetSecretValue", "normal")
    proxy.release()

    assert holder.result(timeout=10) == "slow value"
    assert lookup.result(timeout=10) == "x"
    assert relay.statuses[200] == 1


def test_a_daemon_over_its_connection_limit_is_asked_again_on_a_new_connection(aws, start_daemon, relays):
    aws.put("airflow/variables/v", "x")
    daemon = start_daemon(max_connections=1)
    idle = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)  # a kept-alive connection: the limit
    idle.request("GET", "/healthz")
    assert idle.getresponse().read() == b'{"status": "ok"}'
    relay = relays(daemon.port)
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN)
    try:
        lookup = _in_thread(backend.get_variable, "v")
        _wait_until(lambda: relay.statuses[429] >= 1, "the daemon to answer 429 (too many connections)")
        assert not lookup.done()
    finally:
        idle.close()

    assert lookup.result(timeout=10) == "x"
    assert relay.connections >= 2  # that 429 closed its connection: the retry came on a new one


def test_a_daemon_that_stays_busy_is_a_clear_429_error_within_the_timeout(aws, proxy, start_daemon, relays):
    aws.put("airflow/variables/slow", "slow value")
    aws.put("airflow/variables/v", "secret value")
    daemon = start_daemon(endpoint=proxy.endpoint, max_requests=1)
    proxy.set("GetSecretValue", "hold")
    holder = _in_thread(SidecarSecretsBackend(url=daemon.url, token=TOKEN).get_variable, "slow")
    proxy.wait_for(lambda: proxy.held("GetSecretValue") == 1, 10, "the first lookup to wait on AWS")
    relay = relays(daemon.port)
    timeout = 1.5  # the daemon sends Retry-After: 1, so the backend asks at least twice in that time
    backend = SidecarSecretsBackend(url=relay.url, token=TOKEN, timeout=timeout)

    try:
        with pytest.raises(SidecarError) as raised:
            _in_thread(backend.get_variable, "v").result(timeout=timeout + 5)  # a deadline, not a benchmark
    finally:
        proxy.set("GetSecretValue", "normal")
        proxy.release()

    assert relay.statuses[429] >= 2  # asked again after the Retry-After, not given up at the first 429
    assert set(relay.statuses) == {429}
    message = str(raised.value)
    assert "429" in message and "busy" in message and "'v'" in message and relay.url in message
    assert "SIDECAR_MAX_REQUESTS" in message
    assert "secret value" not in message and TOKEN not in message
    assert holder.result(timeout=10) == "slow value"


# --- Unix socket ---


def test_unix_socket_kwarg(aws, start_daemon, short_dir):
    aws.put("airflow/variables/v", "over a unix socket")
    path = os.path.join(short_dir, "sidecar.sock")
    daemon = start_daemon(unix_socket=path)
    assert daemon.url == f"unix:{path}"
    backend = SidecarSecretsBackend(unix_socket=path, token=TOKEN)

    assert backend.get_variable("v") == "over a unix socket"
    assert backend.get_variable("absent") is None
    first = client._connections()[path][0]
    assert backend.get_variable("v") == "over a unix socket"
    assert client._connections()[path][0] is first  # kept alive


def test_unix_socket_not_there_names_the_socket_and_the_command(short_dir):
    path = os.path.join(short_dir, "nobody.sock")
    backend = SidecarSecretsBackend(unix_socket=path, token=TOKEN, startup_wait=0)

    with pytest.raises(SidecarError) as raised:
        backend.get_variable("v")

    assert path in str(raised.value)
    assert "unix_socket" in str(raised.value)
    assert "airflow-secrets-sidecar serve" in str(raised.value)


# --- another server where the daemon should be ---


class ForeignServer:
    """An HTTP server that is not the daemon: it answers every request 404 with `body` and `headers`."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        import http.server

        class Answer404(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(404)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer404)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"<html><body>404 Not Found</body></html>", {"Content-Type": "text/html"}),  # a web server
        (b'{"error": "not_found", "reason": "missing"}', {"Content-Type": "application/json"}),  # a JSON API
        (b"<html>ERR_NOT_FOUND</html>", {"X-Cache": "MISS from proxy"}),  # a caching proxy
    ],
    ids=["html", "json", "proxy"],
)
def test_a_404_from_another_server_is_an_error_naming_its_address(body, headers):
    server = ForeignServer(body, headers)
    try:
        backend = SidecarSecretsBackend(url=server.url, token=TOKEN)
        with pytest.raises(SidecarError) as raised:
            backend.get_variable("v")
    finally:
        server.close()

    message = str(raised.value)
    assert server.url in message
    assert "404" in message
    assert "'url'" in message


def test_an_empty_key_names_no_secret(aws, start_daemon):
    backend = SidecarSecretsBackend(url=start_daemon().url, token=TOKEN)

    assert backend.get_variable("") is None
    assert backend.get_conn_value("") is None
    assert aws.total() == 0


@pytest.mark.parametrize(
    ("kwarg", "bad"),
    [
        ("timeout", "soon"),
        ("timeout", "10"),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", None),
        ("timeout", float("nan")),
        ("startup_wait", "a while"),
        ("startup_wait", -0.5),
        ("startup_wait", [5]),
        ("startup_wait", True),
    ],
)
def test_a_bad_timeout_or_startup_wait_names_the_kwarg(kwarg, bad):
    with pytest.raises(SidecarError) as raised:
        SidecarSecretsBackend(url="http://127.0.0.1:2779", token=TOKEN, **{kwarg: bad})

    message = str(raised.value)
    assert f"backend_kwargs {kwarg!r}" in message
    assert "seconds" in message
    assert repr(bad) in message


def test_timeout_and_startup_wait_take_json_numbers():
    backend = SidecarSecretsBackend(url="http://127.0.0.1:2779", token=TOKEN, timeout=2.5, startup_wait=0)

    assert (backend.timeout, backend.startup_wait) == (2.5, 0.0)


def _lookup_in_a_child_denied_the_socket(path: str) -> str:
    """`get_variable` in a forked child that may not open `path`: as `nobody` when this runs as root
    (root opens any socket), else as this user, to whom the socket's mode (000) denies it."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the outcome through the pipe, whatever happens
        outcome = "no error"
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            SidecarSecretsBackend(unix_socket=path, token=TOKEN, startup_wait=0).get_variable("v")
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(writer, outcome.encode())
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_a_socket_this_process_may_not_open_names_the_group_setting(short_dir):
    path = os.path.join(short_dir, "sidecar.sock")
    os.chmod(short_dir, 0o755)  # the socket's own mode denies, not its directory's
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(path)
        listening.listen(1)
        os.chmod(path, 0o000 if os.geteuid() else 0o660)  # root's group and owner only

        outcome = _lookup_in_a_child_denied_the_socket(path)

    assert outcome.startswith("SidecarError: "), outcome
    assert path in outcome
    assert "SIDECAR_UNIX_SOCKET_GROUP" in outcome
    assert "serve` running" not in outcome
