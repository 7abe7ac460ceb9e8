"""Airflow 2.10 reads Variables and Connections through `sidecar.backend.SidecarSecretsBackend`: in a
plain process, in `airflow dags test`, and from a daemon it autostarts.

Run with the Airflow 2.10 interpreter (`.venv-airflow2/bin/python tests/airflow2/check_backend.py`), with
a daemon whose store holds SECRETS (`tests/airflow2/run.py` sets that up) and these environment variables:

    AIRFLOW2_CHECK_URL    the daemon's URL, e.g. http://127.0.0.1:2779
    AIRFLOW2_CHECK_TOKEN  its token

The lookups run in a fresh interpreter configured only through `AIRFLOW__*` variables, as a user would;
this script compares what that process printed with what it should have got, and exits 1 on any difference.
It imports nothing from Airflow or the project itself, so `run.py` can import SECRETS from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

SETTINGS = {"retries": 3, "tags": ["etl", "daily"], "nested": {"on": True}}
SECRETS = {  # secret name in AWS -> value
    "airflow/variables/greeting": "hello from aws, read by airflow 2.10",
    "airflow/variables/settings": json.dumps(SETTINGS),
    "airflow/connections/pg": "postgresql://user:p%40ss@db.example.com:5432/analytics",
    # The provider's alias words (engine, user, pass): the daemon normalises them for Airflow.
    "airflow/connections/api": json.dumps(
        {"engine": "http", "user": "svc", "pass": "pw", "host": "api.example.com", "port": 8443, "extra": {"t": 30}}
    ),
    "airflow/config/webserver_secret_key": "webserver-key-from-aws",  # [webserver] secret_key_secret
}
EXPECTED: dict[str, Any] = {
    "backend": "sidecar.backend.SidecarSecretsBackend",  # first in the search path, before env vars and the DB
    "multi_team": False,  # [core] multi_team does not exist in 2.10: the fallback
    "greeting": "hello from aws, read by airflow 2.10",
    "settings": SETTINGS,
    "pg": {
        "conn_type": "postgres",  # Airflow normalises the postgresql:// scheme
        "login": "user",
        "password": "p@ss",
        "host": "db.example.com",
        "port": 5432,
        "schema": "analytics",
        "extra": {},
    },
    "api": {
        "conn_type": "http",
        "login": "svc",
        "password": "pw",
        "host": "api.example.com",
        "port": 8443,
        "schema": None,
        "extra": {"t": 30},
    },
    "config": "webserver-key-from-aws",
    "missing_variable": None,  # a 404 from the daemon is "not here", not an error
    "missing_connection": None,
}

# Runs inside Airflow 2.10; prints one JSON line.
LOOKUPS = r"""
import json
import sys

import airflow
from airflow.configuration import conf, ensure_secrets_loaded
from airflow.hooks.base import BaseHook
from airflow.models import Variable


def connection(conn_id):
    conn = BaseHook.get_connection(conn_id)
    return {
        "conn_type": conn.conn_type, "login": conn.login, "password": conn.password, "host": conn.host,
        "port": conn.port, "schema": conn.schema, "extra": conn.extra_dejson,
    }


backends = ensure_secrets_loaded()
first = backends[0]
print(json.dumps({
    "airflow_version": airflow.__version__,
    "backend": f"{type(first).__module__}.{type(first).__name__}",
    "backend_url": getattr(first, "url", None),
    "backend_file": sys.modules[type(first).__module__].__file__,
    "multi_team": conf.getboolean("core", "multi_team", fallback=False),
    "greeting": Variable.get("greeting"),
    "settings": Variable.get("settings", deserialize_json=True),
    "pg": connection("pg"),
    "api": connection("api"),
    "config": conf.get("webserver", "secret_key"),
    # Straight to the backend: through Variable.get a miss would go on to the (empty) metastore.
    "missing_variable": first.get_variable("no_such_variable"),
    "missing_connection": first.get_connection(conn_id="no_such_conn"),
}))
"""


def run_lookups(url: str, token: str) -> tuple[dict[str, Any] | None, str]:
    """Run LOOKUPS in a fresh interpreter configured for the sidecar; its JSON (None on failure) and stderr."""
    with tempfile.TemporaryDirectory(prefix="airflow2-home-") as home:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AIRFLOW", "SIDECAR_", "_AIRFLOW"))  # the backend must use its kwargs
        }
        env.update(
            AIRFLOW_HOME=home,
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
            AIRFLOW__SECRETS__BACKEND="sidecar.backend.SidecarSecretsBackend",
            AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"url": url, "token": token, "startup_wait": 0}),
            AIRFLOW__WEBSERVER__SECRET_KEY_SECRET="webserver_secret_key",
        )
        result = subprocess.run(
            [sys.executable, "-c", LOOKUPS], env=env, cwd=home, capture_output=True, text=True, timeout=180
        )
    if result.returncode != 0:
        return None, result.stderr
    try:
        return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr
    except (IndexError, ValueError):
        return None, f"no JSON line in the output:\n{result.stdout}\n{result.stderr}"


def mismatches(out: dict[str, Any], url: str, stderr: str) -> list[str]:
    problems = []
    if not str(out.get("airflow_version", "")).startswith("2.10."):
        problems.append(f"expected Airflow 2.10.x, this interpreter has {out.get('airflow_version')!r}")
    if out.get("backend_url") != url:
        problems.append(f"backend_kwargs 'url' not honoured: the backend uses {out.get('backend_url')!r}, not {url!r}")
    for key, expected in EXPECTED.items():
        if out.get(key) != expected:
            problems.append(f"{key}: expected {expected!r}, got {out.get(key)!r}")
    # Airflow 2.10 logs a backend's exception and moves on to the next backend: a failing sidecar shows here.
    for line in stderr.splitlines():
        if "Unable to retrieve" in line or "SidecarError" in line or "Traceback" in line:
            problems.append(f"Airflow logged a failure: {line.strip()}")
    return problems


# A DAG for `airflow dags test`: a Variable at parse time, a Connection and a Variable in its task.
DAG_FILE = r"""
import pendulum
from airflow.decorators import dag, task
from airflow.hooks.base import BaseHook
from airflow.models import Variable

GREETING = Variable.get("greeting")  # parse time


@dag(dag_id="airflow2_sidecar", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def airflow2_sidecar():
    @task
    def read():
        conn = BaseHook.get_connection("pg")
        print("AIRFLOW2-DAG", GREETING == Variable.get("greeting"), conn.host, conn.login)

    read()


airflow2_sidecar()
"""


def airflow_env(home: str, kwargs: dict[str, Any]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW", "_AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=os.path.join(home, "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__SECRETS__BACKEND="sidecar.backend.SidecarSecretsBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps(kwargs),
    )
    return env


def run_dag(url: str, token: str) -> list[str]:
    """`airflow dags test` of DAG_FILE through the daemon at `url`; the problems found."""
    with tempfile.TemporaryDirectory(prefix="airflow2-dag-") as home:
        os.makedirs(os.path.join(home, "dags"))
        with open(os.path.join(home, "dags", "airflow2_sidecar.py"), "w") as handle:
            handle.write(DAG_FILE)
        env = airflow_env(home, {"url": url, "token": token, "startup_wait": 0})
        airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
        for args in (["db", "migrate"], ["dags", "test", "airflow2_sidecar"]):
            result = subprocess.run([airflow, *args], env=env, cwd=home, capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                return [f"airflow {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"]
        logs = ""
        for folder, _, files in os.walk(os.path.join(home, "logs")):
            for name in files:
                with open(os.path.join(folder, name)) as handle:
                    logs += handle.read()
    printed = [line for line in (result.stdout + result.stderr + logs).splitlines() if "AIRFLOW2-DAG" in line]
    if not any("AIRFLOW2-DAG True db.example.com user" in line for line in printed):
        return [f"the DAG's task did not read what it should: {printed or result.stdout[-2000:]}"]
    return []


def run_autostart(daemon: str, daemon_kwargs: str) -> list[str]:
    """A fresh Airflow 2.10 process that finds no daemon starts one (autostart) and reads through it."""
    with tempfile.TemporaryDirectory(prefix="airflow2-autostart-") as home:
        unix_socket = os.path.join(home, "run", "s.sock")
        env = airflow_env(home, {"autostart": daemon, "unix_socket": unix_socket})
        env.update(SIDECAR_BACKEND_KWARGS=daemon_kwargs, SIDECAR_WARMUP="false")
        code = "from airflow.models import Variable; print(Variable.get('greeting'))"
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=home, capture_output=True, text=True)
        pid_file = os.path.join(home, "run", "sidecar.pid")
        if os.path.exists(pid_file):
            with open(pid_file) as handle:
                os.kill(int(handle.read()), 15)  # the daemon outlives its starter: stop it
    if result.returncode != 0 or result.stdout.strip().splitlines()[-1:] != [EXPECTED["greeting"]]:
        return [f"autostart: {result.stdout[-1000:]}{result.stderr[-2000:]}"]
    return []


def main() -> int:
    try:
        url, token = os.environ["AIRFLOW2_CHECK_URL"], os.environ["AIRFLOW2_CHECK_TOKEN"]
    except KeyError as missing:
        print(f"check_backend: set {missing.args[0]} (see the docstring); run through `make test-airflow2`")
        return 2
    out, stderr = run_lookups(url, token)
    if out is None:
        print(f"FAILED: the Airflow 2.10 lookup process failed ({sys.executable}):\n{stderr}", file=sys.stderr)
        return 1
    problems = mismatches(out, url, stderr) + run_dag(url, token)
    if os.environ.get("AIRFLOW2_CHECK_DAEMON"):
        problems += run_autostart(os.environ["AIRFLOW2_CHECK_DAEMON"], os.environ["AIRFLOW2_CHECK_DAEMON_KWARGS"])
    if problems:
        print(f"FAILED: Airflow {out.get('airflow_version')} through the sidecar backend:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(
        f"ok: Airflow {out['airflow_version']} read 2 variables, 2 connections (URI and JSON) and a config option "
        f"through {out['backend']} ({out['backend_file']}) at {url}; misses were None; `airflow dags test` read "
        "a Variable at parse time and a Connection and a Variable in its task"
        + ("; a fresh process autostarted a daemon, read through it" if os.environ.get("AIRFLOW2_CHECK_DAEMON") else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
