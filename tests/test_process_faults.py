"""The daemon as a real process (`python -m sidecar serve`) killed, restarted and signalled under load.

Airflow's side is `SidecarSecretsBackend` in this process, over real loopback sockets; AWS is moto's
server, behind `tests.faults.FaultProxy` where requests must be held in flight. Every wait has a
deadline and fails when it passes; every process started here is killed at teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest

from sidecar.backend import SidecarError, SidecarSecretsBackend, SidecarUnreachable
from sidecar.daemon.lifecycle import SHUTDOWN_GRACE
from tests.support import FAKE_AWS_ENV, REGION, REPO, TOKEN, AwsEmulator, connection_port, free_port, refused

STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)  # polling a condition


class DaemonProcess:
    """`python -m sidecar serve` on a fixed port; its stdout and stderr go to a file."""

    def __init__(self, port: int, env: dict[str, str], log: IO[str]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8") as handle:
            return handle.read()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        return self.popen.wait(timeout=timeout)

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"the daemon exited with {self.popen.returncode}:\n{self.output()}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.05)  # polling for the process to listen
        pytest.fail(f"the daemon did not answer /healthz within {STARTUP_TIMEOUT:g}s:\n{self.output()}")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """`daemons(port, endpoint, **SIDECAR_settings)`: a healthy daemon process, killed at teardown."""
    started: list[DaemonProcess] = []

    def start(port: int, endpoint: str, **settings: str) -> DaemonProcess:
        env = {name: value for name, value in os.environ.items() if not name.startswith("SIDECAR_")}
        env.update(FAKE_AWS_ENV)
        env.update(
            SIDECAR_TOKEN=TOKEN,
            SIDECAR_PORT=str(port),
            SIDECAR_BACKEND_KWARGS=json.dumps({"region_name": REGION, "endpoint_url": endpoint}),
        )
        env.update({f"SIDECAR_{name.upper()}": value for name, value in settings.items()})
        log = open(tmp_path / f"daemon-{len(started)}.log", "w")  # noqa: SIM115 (closed at teardown)
        process = DaemonProcess(port, env, log)
        started.append(process)
        process.wait_until_healthy()
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.wait(timeout=EXIT_TIMEOUT)
        process.log.close()


class Worker:
    """One long-lived thread: the backend keeps one keep-alive connection per thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1)

    def submit(self, call: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pool.submit(call, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def workers() -> Iterator[Callable[[int], list[Worker]]]:
    made: list[Worker] = []

    def make(count: int) -> list[Worker]:
        made.extend(Worker() for _ in range(count))
        return made[-count:]

    yield make
    for worker in made:
        worker.close()


def in_thread(call: Callable[..., Any], *args: Any) -> Future[Any]:
    """A lookup on a fresh thread (so a fresh connection); `.result(timeout)` bounds the wait."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call, *args)
    pool.shutdown(wait=False)
    return future


def assert_secret_free(text: str, values: list[str]) -> None:
    assert TOKEN not in text
    for value in values:
        assert value not in text


# --- a. SIGKILL, then a restart on the same port, under a backend holding keep-alive connections ---


def test_a_daemon_killed_and_restarted_on_its_port_serves_the_same_backend_again(aws: AwsEmulator, daemons, workers):
    values = {f"k{i}": f"value-{i}" for i in range(3)}
    for key, value in values.items():
        aws.put(f"airflow/variables/{key}", value)
    port = free_port()
    first = daemons(port, aws.endpoint)
    backend = SidecarSecretsBackend(url=first.url, token=TOKEN, timeout=5, local_ttl=0)
    threads = workers(3)
    for thread in threads:
        assert thread.submit(backend.get_variable, "k0").result(timeout=10) == "value-0"
    assert backend.get_variable("k0") == "value-0"
    kept = [thread.submit(connection_port, backend._endpoint.address).result(timeout=10) for thread in threads]
    assert all(port is not None for port in kept)  # kept alive

    first.popen.kill()
    assert first.wait() == -signal.SIGKILL

    # In the gap: a clear error within the backend's timeout, or the right value; never None nor another value.
    gap = [thread.submit(backend.get_variable, "k1") for thread in threads[:2]]
    gap.append(in_thread(backend.get_variable, "k1"))
    for lookup in gap:
        try:
            value = lookup.result(timeout=backend.timeout)
        except SidecarError as exc:
            assert "airflow-secrets-sidecar serve" in str(exc) and first.url in str(exc)
            assert_secret_free(str(exc), list(values.values()))
        else:
            assert value == "value-1"
    with pytest.raises(SidecarUnreachable):
        backend.get_variable("k1")  # nobody listens: refused, and once a daemon answered, no waiting

    second = daemons(port, aws.endpoint)

    assert second.url == first.url
    for thread in threads:  # two connections failed in the gap, one was left dead since the kill
        assert thread.submit(lambda: {key: backend.get_variable(key) for key in values}).result(timeout=10) == values
        assert thread.submit(backend.get_variable, "absent").result(timeout=10) is None
    assert {key: backend.get_variable(key) for key in values} == values
    assert backend.get_variable("absent") is None
    assert_secret_free(first.output() + second.output(), list(values.values()))


# --- b. and c. signals while lookups of cold keys wait on a slow AWS ---


def _cold_lookups_in_flight(aws: AwsEmulator, proxy: Any, daemons: Callable[..., DaemonProcess], count: int = 4):
    """A daemon (no warm-up) and `count` lookups of uncached keys, each held at AWS, each on its own connection."""
    values = {f"cold{i}": f"cold-value-{i}" for i in range(count)}
    for key, value in values.items():
        aws.put(f"airflow/variables/{key}", value)
    daemon = daemons(free_port(), proxy.endpoint, warmup="false", request_timeout="30")
    backend = SidecarSecretsBackend(url=daemon.url, token=TOKEN, timeout=30)
    proxy.set("GetSecretValue", "hold")
    lookups = {key: in_thread(backend.get_variable, key) for key in values}
    proxy.wait_for(lambda: proxy.held("GetSecretValue") == count, 10, f"{count} lookups to wait on AWS")
    return daemon, values, lookups


def test_sigterm_under_load_refuses_new_connections_finishes_those_in_flight_and_exits_0(aws, proxy, daemons):
    daemon, values, lookups = _cold_lookups_in_flight(aws, proxy, daemons)

    daemon.signal(signal.SIGTERM)
    signalled_at = time.monotonic()

    wait_until(lambda: refused(daemon.port), "the daemon to stop accepting connections")
    with pytest.raises(SidecarUnreachable):
        SidecarSecretsBackend(url=daemon.url, token=TOKEN, startup_wait=0).get_variable("cold0")
    assert not any(lookup.done() for lookup in lookups.values())  # still waiting on AWS
    proxy.set("GetSecretValue", "normal")
    proxy.release()

    assert {key: lookup.result(timeout=10) for key, lookup in lookups.items()} == values
    assert daemon.wait(timeout=max(signalled_at + SHUTDOWN_GRACE - time.monotonic(), 0.1)) == 0, daemon.output()
    output = daemon.output()
    assert "stopping: finishing requests in flight" in output and "Traceback" not in output
    assert_secret_free(output, list(values.values()))


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
    ids=["term-term", "int-term", "term-int"],
)
def test_a_second_signal_while_requests_are_held_exits_at_once_with_1(aws, proxy, daemons, first, second):
    daemon, values, lookups = _cold_lookups_in_flight(aws, proxy, daemons)
    daemon.signal(first)
    wait_until(lambda: refused(daemon.port), "the first signal to start the graceful stop")
    assert not any(lookup.done() for lookup in lookups.values())

    daemon.signal(second)

    # Well before the grace period, during which the first signal alone would have kept it waiting.
    assert daemon.wait(timeout=SHUTDOWN_GRACE / 2) == 1, daemon.output()
    output = daemon.output()
    assert output.count("second signal: exiting now") == 1
    assert "Traceback" not in output
    for lookup in lookups.values():  # dropped: a clear error, never a value or None
        with pytest.raises(SidecarError) as raised:
            lookup.result(timeout=10)
        assert_secret_free(str(raised.value), list(values.values()))
    assert_secret_free(output, list(values.values()))
