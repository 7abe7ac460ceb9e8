"""The backend when the daemon is not there: wait for a starting one, fail clearly, or go direct."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from sidecar.backend import SidecarError, SidecarSecretsBackend, SidecarUnreachable
from tests.support import REGION, TOKEN, OpenDaemonThread, make_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_first_lookup_waits_for_a_daemon_that_is_still_starting(aws):
    aws.put("airflow/variables/v", "value")
    port = _free_port()
    backend = SidecarSecretsBackend(url=f"http://127.0.0.1:{port}", token=TOKEN, startup_wait=20)
    settings = make_settings(aws, port=port, warmup="false")
    daemon = OpenDaemonThread(settings)
    starter = threading.Timer(0.3, daemon.__enter__)  # the daemon comes up while the lookup waits
    starter.start()
    try:
        assert backend.get_variable("v") == "value"
    finally:
        starter.join()
        daemon.__exit__()


def test_no_daemon_raises_a_clear_error_after_the_wait_then_fails_fast():
    port = _free_port()
    backend = SidecarSecretsBackend(url=f"http://127.0.0.1:{port}", token=TOKEN, startup_wait=0.2)

    with pytest.raises(SidecarUnreachable) as raised:
        backend.get_variable("v")
    message = str(raised.value)
    assert f"http://127.0.0.1:{port}" in message and "airflow-secrets-sidecar serve" in message
    started = time.monotonic()
    with pytest.raises(SidecarUnreachable):
        backend.get_variable("v")
    assert time.monotonic() - started < 0.2  # no second wait; a bound, not a benchmark


def test_on_unavailable_direct_asks_aws_through_the_provider_and_says_so_once(aws, caplog):
    aws.put("airflow/variables/v", "direct value")
    aws.put("airflow/variables/ops--t", "team value")
    aws.put("airflow/connections/c", '{"conn_type": "http", "user": "u"}')
    backend = SidecarSecretsBackend(
        url=f"http://127.0.0.1:{_free_port()}",
        token=TOKEN,
        startup_wait=0,
        on_unavailable="direct",
        fallback_kwargs={"region_name": REGION, "endpoint_url": aws.endpoint},
    )

    with caplog.at_level(logging.WARNING, logger="sidecar.backend"):
        assert backend.get_variable("v") == "direct value"
        assert backend.get_variable("t", team_name="ops") == "team value"
        assert backend.get_variable("absent") is None
        assert '"login": "u"' in backend.get_conn_value("c")
    assert aws.calls["GetSecretValue"] == 4
    assert len([r for r in caplog.records if "asking AWS directly" in r.getMessage()]) == 1


def test_direct_fallback_reads_sidecar_backend_kwargs_from_the_environment(aws, monkeypatch):
    aws.put("custom/v", "from env kwargs")
    monkeypatch.setenv(
        "SIDECAR_BACKEND_KWARGS",
        f'{{"variables_prefix": "custom", "region_name": "{REGION}", "endpoint_url": "{aws.endpoint}"}}',
    )
    backend = SidecarSecretsBackend(
        url=f"http://127.0.0.1:{_free_port()}", token=TOKEN, startup_wait=0, on_unavailable="direct"
    )

    assert backend.get_variable("v") == "from env kwargs"


def test_a_reachable_daemon_is_used_even_with_direct_fallback(aws):
    aws.put("airflow/variables/v", "via sidecar")
    with OpenDaemonThread(make_settings(aws, warmup="false")) as running:
        host, port = running.address
        backend = SidecarSecretsBackend(url=f"http://{host}:{port}", token=TOKEN, on_unavailable="direct")
        assert backend.get_variable("v") == "via sidecar"
        aws.clear_counts()
        assert backend.get_variable("v") == "via sidecar"
        assert aws.total() == 0  # served from the daemon's cache, not by the provider


def test_bad_resilience_kwargs_are_refused():
    with pytest.raises(SidecarError, match="on_unavailable"):
        SidecarSecretsBackend(on_unavailable="ignore")
    with pytest.raises(SidecarError, match="source"):
        SidecarSecretsBackend(source="vault")


def test_multi_team_refuses_ids_with_the_team_separator_like_the_provider(aws, monkeypatch, caplog):
    aws.put("airflow/variables/a--b", "ambiguous")
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    with OpenDaemonThread(make_settings(aws, warmup="false")) as running:
        host, port = running.address
        backend = SidecarSecretsBackend(url=f"http://{host}:{port}", token=TOKEN)
        with caplog.at_level(logging.WARNING, logger="sidecar.backend"):
            assert backend.get_variable("a--b") is None
            assert backend.get_conn_value("a--b", team_name="a") is None
            assert backend.get_config("x--y") is None
    assert aws.total() == 0
    assert len([r for r in caplog.records if "is ambiguous and is not looked up" in r.getMessage()]) == 3
