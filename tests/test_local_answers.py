"""The backend's answers kept in each process (`local_ttl`), against a real daemon over real sockets.

Requests are counted where they arrive: the daemon's own `sidecar_request_seconds` histogram. The
backend's clock and the daemon's are injected, so lifetimes pass without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar import backend as backend_module
from sidecar.backend import LOCAL_TTL, SidecarError, SidecarSecretsBackend
from tests.support import (
    TOKEN,
    AwsEmulator,
    FakeClock,
    OpenDaemonThread,
    make_settings,
    served_requests,
    variable_in_forked_child,
)


class Daemon:
    """A real daemon in a thread, on an injected clock, that counts the /v1 requests it answered."""

    def __init__(self, aws: AwsEmulator) -> None:
        self.clock = FakeClock()
        self._thread = OpenDaemonThread(make_settings(aws, warmup="false"), timer=self.clock)
        self._thread.__enter__()
        self.url = self._thread.daemon.url

    def requests(self) -> int:
        return int(sum(served_requests(self.url).values()))

    def stop(self) -> None:
        self._thread.__exit__()


@pytest.fixture
def daemon(aws: AwsEmulator) -> Iterator[Daemon]:
    running = Daemon(aws)
    yield running
    running.stop()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The backend's clock."""
    fake = FakeClock()
    monkeypatch.setattr(backend_module, "_clock", fake)
    return fake


def _backend(daemon: Daemon, **kwargs: Any) -> SidecarSecretsBackend:
    return SidecarSecretsBackend(url=daemon.url, token=TOKEN, **kwargs)


def test_found_and_absent_answers_are_kept_for_local_ttl_without_a_request(aws, daemon, clock):
    aws.put("airflow/variables/v", "one")
    backend = _backend(daemon)
    assert backend.local_ttl == LOCAL_TTL

    assert backend.get_variable("v") == "one"
    assert backend.get_variable("absent") is None
    assert daemon.requests() == 2
    clock.advance(LOCAL_TTL - 0.01)
    for _ in range(100):
        assert backend.get_variable("v") == "one"
        assert backend.get_variable("absent") is None
    assert daemon.requests() == 2

    clock.advance(0.01)  # the lifetime is over: the daemon is asked again, once per key
    assert backend.get_variable("v") == "one"
    assert backend.get_variable("absent") is None
    assert backend.get_variable("v") == "one"
    assert daemon.requests() == 4


def test_kinds_and_teams_are_kept_apart(aws, daemon, clock):
    aws.put("airflow/variables/k", "variable")
    aws.put("airflow/connections/k", "postgresql://h/db")
    aws.put("airflow/variables/ops--k", "team variable")
    backend = _backend(daemon)

    assert backend.get_variable("k") == "variable"
    assert backend.get_conn_value("k") == "postgresql://h/db"
    assert backend.get_config("k") is None
    assert backend.get_variable("k", team_name="ops") == "team variable"
    assert daemon.requests() == 4
    assert [backend.get_variable("k"), backend.get_variable("k", team_name="ops")] == ["variable", "team variable"]
    assert daemon.requests() == 4


def test_every_backend_object_of_a_process_shares_them(aws, daemon, clock):
    """Airflow 3.0-3.2 build a backend object for every lookup."""
    aws.put("airflow/variables/v", "shared")
    assert _backend(daemon).get_variable("v") == "shared"
    assert _backend(daemon).get_variable("v") == "shared"
    assert daemon.requests() == 1
    assert _backend(daemon, local_ttl=0).get_variable("v") == "shared"  # its own bound: none
    assert daemon.requests() == 2


def test_local_ttl_zero_asks_the_daemon_every_time(aws, daemon, clock):
    aws.put("airflow/variables/v", "x")
    backend = _backend(daemon, local_ttl=0)
    for _ in range(5):
        assert backend.get_variable("v") == "x"
        assert backend.get_variable("absent") is None
    assert daemon.requests() == 10


def test_a_rotation_is_seen_within_local_ttl_of_the_daemon_seeing_it(aws, daemon, clock):
    aws.put("airflow/variables/v", "old")
    backend = _backend(daemon, local_ttl=2)
    assert backend.get_variable("v") == "old"

    aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="new")
    daemon.clock.advance(1800)  # the daemon's TTL: it fetches again at its next request
    clock.advance(1.99)
    assert backend.get_variable("v") == "old"  # within local_ttl
    clock.advance(0.01)
    assert backend.get_variable("v") == "new"


def test_a_revocation_is_seen_within_local_ttl_and_never_kept(aws, daemon, clock):
    aws.put("airflow/variables/v", "secret-value-1")
    backend = _backend(daemon, local_ttl=2)
    assert backend.get_variable("v") == "secret-value-1"

    aws.fail["GetSecretValue:airflow/variables/v"] = "AccessDeniedException"
    daemon.clock.advance(1800)
    assert backend.get_variable("v") == "secret-value-1"  # within local_ttl
    clock.advance(2)
    for _ in range(2):  # the refusal is not kept: each lookup asks the daemon
        with pytest.raises(SidecarError) as refused:
            backend.get_variable("v")
        assert "secret-value-1" not in str(refused.value)
    assert daemon.requests() == 3
    assert backend_module._answers[backend._endpoint.address] == {}  # the old value left memory at expiry


def test_a_refused_token_is_never_kept(aws, daemon, clock):
    aws.put("airflow/variables/v", "x")
    backend = SidecarSecretsBackend(url=daemon.url, token="not-the-token")
    for _ in range(2):
        with pytest.raises(SidecarError, match="refused the token"):
            backend.get_variable("v")
    assert daemon.requests() == 2
    assert _backend(daemon).get_variable("v") == "x"


def test_the_oldest_answer_goes_first_past_the_bound(aws, daemon, clock, monkeypatch):
    monkeypatch.setattr(backend_module, "LOCAL_MAX_ENTRIES", 3)
    backend = _backend(daemon)
    for key in "abcd":
        assert backend.get_variable(key) is None
    assert daemon.requests() == 4
    assert len(backend_module._answers[backend._endpoint.address]) == 3

    assert backend.get_variable("d") is None  # kept
    assert backend.get_variable("b") is None  # kept
    assert daemon.requests() == 4
    assert backend.get_variable("a") is None  # dropped for d: asked again, and b goes now
    assert daemon.requests() == 5
    assert len(backend_module._answers[backend._endpoint.address]) == 3


def test_a_forked_child_starts_with_no_answers(aws, daemon):
    aws.put("airflow/variables/v", "before")
    backend = _backend(daemon, local_ttl=3600)
    assert backend.get_variable("v") == "before"
    aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="after")
    daemon.clock.advance(1800)

    result, exitcode = variable_in_forked_child(backend, "v")

    assert result == ("ok", "after")  # asked the daemon, which fetched the rotated value
    assert exitcode == 0
    assert daemon.requests() == 2
    assert backend.get_variable("v") == "before"  # the parent keeps its own for its local_ttl


def test_threads_share_them_and_never_see_another_keys_answer(aws, daemon, clock, monkeypatch):
    monkeypatch.setattr(backend_module, "LOCAL_MAX_ENTRIES", 8)
    keys = [f"k{index}" for index in range(16)]
    for key in keys[::2]:
        aws.put(f"airflow/variables/{key}", f"value of {key}")
    expected = {key: (f"value of {key}" if index % 2 == 0 else None) for index, key in enumerate(keys)}
    backend = _backend(daemon)
    wrong: list[str] = []
    failures: list[BaseException] = []

    def read(offset: int) -> None:
        try:
            for turn in range(200):
                key = keys[(turn * 7 + offset) % len(keys)]
                if backend.get_variable(key) != expected[key]:
                    wrong.append(key)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=read, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == [] and wrong == []
    assert len(backend_module._answers[backend._endpoint.address]) <= 8


@pytest.mark.parametrize("value", [-1, "5", True, float("nan"), float("inf"), None])
def test_a_local_ttl_that_is_not_seconds_is_named(value):
    with pytest.raises(SidecarError, match="'local_ttl' must be a number of seconds, 0 or more") as refused:
        SidecarSecretsBackend(url="http://127.0.0.1:1", token=TOKEN, local_ttl=value)
    assert TOKEN not in str(refused.value)
