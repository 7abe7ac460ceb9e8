"""Real Airflow (the Task SDK lookup path) reading through the sidecar, in fresh Python processes.

A `python -m sidecar serve` process stands in front of the AWS emulation; each Airflow process is
configured the way a user would, through `AIRFLOW__*` environment variables, and prints what
`Variable.get`, `BaseHook.get_connection` and `conf.get` returned.

Which setting applies where (Airflow 3.x, `airflow.sdk.execution_time.supervisor.ensure_secrets_backend_loaded`):
a task, a DAG-parsing child, a trigger runner and a plain script are "worker mode" and read
`[workers] secrets_backend`, falling back to `[secrets] backend`; the scheduler, API server and
DAG-processor manager set `_AIRFLOW_PROCESS_CONTEXT=server` and read `[secrets] backend` only.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import __version__
from tests.support import REGION, REPO, TOKEN, AwsEmulator, airflow_env

SIDECAR = "sidecar.backend.SidecarSecretsBackend"
PG_URI = "postgresql://user:p%40ss@db.example.com:5432/analytics"
API_CONN = {  # the provider's alias words: engine -> conn_type, user -> login, pass -> password
    "engine": "http",
    "user": "svc",
    "pass": "pw",
    "host": "api.example.com",
    "port": 8443,
    "extra": {"timeout": 30},
}
SETTINGS = {"retries": 3, "tags": ["etl", "daily"], "nested": {"on": True}}

# Runs inside Airflow: every lookup in one process, because Airflow takes ~1 s to import.
AIRFLOW_SCRIPT = r"""
import json, os, sys

from airflow.sdk import Variable
try:
    from airflow.sdk import BaseHook
except ImportError:
    from airflow.hooks.base import BaseHook
from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded


def connection(conn_id):
    conn = BaseHook.get_connection(conn_id)
    return {
        "conn_type": conn.conn_type, "login": conn.login, "password": conn.password, "host": conn.host,
        "port": conn.port, "schema": conn.schema, "extra": conn.extra_dejson,
    }


def failure(call):
    try:
        call()
    except Exception as exc:
        error = getattr(exc, "error", None)
        return {"type": f"{type(exc).__module__}.{type(exc).__name__}", "message": str(exc),
                "code": str(getattr(getattr(error, "error", None), "value", ""))}
    return None


def sidecars(backends):
    return [getattr(backend, "url", None) for backend in backends if type(backend).__name__ == "SidecarSecretsBackend"]


out = {
    "sidecars": sidecars(ensure_secrets_backend_loaded()),
    "greeting": Variable.get("greeting"),
    "settings": Variable.get("settings", deserialize_json=True),
    "pg": connection("pg"),
    "api": connection("api"),
    "missing_variable": failure(lambda: Variable.get("no_such_variable")),
    "missing_connection": failure(lambda: BaseHook.get_connection("no_such_conn")),
    "default": Variable.get("no_such_variable", default="fallback"),
}
if "--config" in sys.argv:
    from airflow.configuration import conf as core_conf
    try:
        from airflow.sdk.configuration import conf as sdk_conf
    except ImportError:  # before Airflow 3.2 the Task SDK reads the core's conf
        sdk_conf = core_conf
    out["config_core"] = core_conf.get("api", "secret_key")
    out["config_sdk"] = sdk_conf.get("api", "secret_key")
os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"
out["server_sidecars"] = sidecars(ensure_secrets_backend_loaded())
print(json.dumps(out))
"""


class SidecarProcess:
    """`python -m sidecar serve` on a free port, in front of the emulator; stopped with SIGTERM."""

    def __init__(self, aws: AwsEmulator) -> None:
        env = {name: value for name, value in os.environ.items() if not name.startswith("SIDECAR_")}
        env.update(
            SIDECAR_TOKEN=TOKEN,
            SIDECAR_PORT="0",
            SIDECAR_WARMUP="false",  # every lookup reaches AWS once, so the calls show what Airflow asked
            SIDECAR_BACKEND_KWARGS=json.dumps({"region_name": REGION, "endpoint_url": aws.endpoint}),
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        self.log: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + 30
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError("the sidecar did not start:\n" + "".join(self.log)) from None
            if " serving " in line:
                assert f"airflow-secrets-sidecar {__version__} serving" in line  # the version an operator reports
                self.url = line.split(" on ", 1)[1].split()[0]
                return

    def _drain(self, lines: queue.Queue[str]) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            lines.put(line)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture
def sidecar(aws: AwsEmulator) -> Iterator[SidecarProcess]:
    aws.put("airflow/variables/greeting", "hello from aws")
    aws.put("airflow/variables/settings", json.dumps(SETTINGS))
    aws.put("airflow/connections/pg", PG_URI)
    aws.put("airflow/connections/api", json.dumps(API_CONN))
    aws.put("airflow/config/api_secret_key", "config-from-aws")
    process = SidecarProcess(aws)
    yield process
    process.stop()
    assert process.process.returncode == 0, "".join(process.log)


def _closed_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def run_airflow(home: Path, settings: dict[str, str], *args: str) -> dict[str, Any]:
    """Run AIRFLOW_SCRIPT in a fresh interpreter with only these Airflow settings; its printed JSON."""
    result = subprocess.run(
        [sys.executable, "-c", AIRFLOW_SCRIPT, *args],
        env=airflow_env(home, **settings),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Airflow logs a backend's exception (to stdout) and moves on to the next backend: look for one.
    output = result.stdout + result.stderr
    assert "Unable to retrieve" not in output, output
    assert "SidecarError" not in output, output
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_values_parsed(out: dict[str, Any]) -> None:
    assert out["greeting"] == "hello from aws"
    assert out["settings"] == SETTINGS
    assert out["pg"] == {
        "conn_type": "postgres",  # Airflow's own normalising of the URI scheme
        "login": "user",
        "password": "p@ss",
        "host": "db.example.com",
        "port": 5432,
        "schema": "analytics",
        "extra": {},
    }
    assert out["api"] == {
        "conn_type": "http",
        "login": "svc",
        "password": "pw",
        "host": "api.example.com",
        "port": 8443,
        "schema": None,
        "extra": {"timeout": 30},
    }
    assert out["missing_variable"]["type"] == "airflow.sdk.exceptions.AirflowRuntimeError"
    assert out["missing_variable"]["code"] == "VARIABLE_NOT_FOUND"
    assert "no_such_variable" in out["missing_variable"]["message"]
    assert out["missing_connection"]["type"].endswith(".AirflowNotFoundException")
    assert "no_such_conn" in out["missing_connection"]["message"]
    assert out["default"] == "fallback"


def test_secrets_backend_serves_variables_connections_and_config(aws, sidecar, tmp_path):
    kwargs = json.dumps({"url": sidecar.url, "token": TOKEN})
    out = run_airflow(
        tmp_path,
        {
            "AIRFLOW__SECRETS__BACKEND": SIDECAR,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": kwargs,
            "AIRFLOW__API__SECRET_KEY_SECRET": "api_secret_key",
        },
        "--config",
    )

    assert_values_parsed(out)
    assert out["config_core"] == "config-from-aws"
    assert out["config_sdk"] == "config-from-aws"
    # A plain process is in worker mode and falls back to [secrets]; a server process reads [secrets].
    assert out["sidecars"] == [sidecar.url]
    assert out["server_sidecars"] == [sidecar.url]
    assert "airflow/variables/no_such_variable" in aws.names  # the miss was the daemon's to answer
    assert "airflow/connections/no_such_conn" in aws.names
    assert aws.calls["GetSecretValue"] == len(set(aws.names))  # each name reached AWS once: cached after


def test_workers_secrets_backend_wins_in_worker_mode_and_server_mode_ignores_it(aws, sidecar, tmp_path):
    dead_url = _closed_url()
    out = run_airflow(
        tmp_path,
        {
            "AIRFLOW__SECRETS__BACKEND": SIDECAR,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"url": dead_url, "token": TOKEN}),
            "AIRFLOW__WORKERS__SECRETS_BACKEND": SIDECAR,
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"url": sidecar.url, "token": TOKEN}),
        },
    )

    assert_values_parsed(out)  # had [secrets] (nothing listening) been used, every lookup would fail
    assert out["sidecars"] == [sidecar.url]
    assert out["server_sidecars"] == [dead_url]
    assert "airflow/variables/no_such_variable" in aws.names


def test_workers_secrets_backend_alone_is_enough_for_task_lookups(aws, sidecar, tmp_path):
    out = run_airflow(
        tmp_path,
        {
            "AIRFLOW__WORKERS__SECRETS_BACKEND": SIDECAR,
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"url": sidecar.url, "token": TOKEN}),
        },
    )

    assert_values_parsed(out)
    assert out["sidecars"] == [sidecar.url]
    assert out["server_sidecars"] == []
