"""A real DAG run: `airflow dags test` (Airflow 3, SQLite) with the sidecar as the secrets backend.

The DAG file reads a Variable at parse time (its owner, used in default_args and the description) and,
inside a @task, a Connection and another Variable. The daemon runs in front of the AWS emulation; the
Airflow CLI runs as a separate process configured only through `AIRFLOW__*` variables, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.support import TOKEN, AwsEmulator, DaemonThread, airflow_env, make_settings, served_requests

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = Path(sys.executable).with_name("airflow")  # the CLI of the environment running the tests
DAG_ID = "sidecar_secrets_dag"
MARKER = "SIDECAR-DAG-TEST"
OWNER = "data-platform-from-aws"
BATCH_SIZE = "250"
WAREHOUSE_PASSWORD = "s3cr3t-pa55"
WAREHOUSE_URI = f"postgresql://etl:{WAREHOUSE_PASSWORD}@warehouse.example.com:5432/analytics"

DAG_FILE = f"""
from __future__ import annotations

import hashlib

import pendulum

from airflow.sdk import Variable, dag, get_current_context, task

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook

# Parse time: every parse of this file asks the secrets backend.
OWNER = Variable.get("dag_owner")


@dag(
    dag_id="{DAG_ID}",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={{"owner": OWNER}},
    description=f"owned by {{OWNER}}",
)
def sidecar_secrets_dag():
    @task
    def use_secrets():
        conn = BaseHook.get_connection("warehouse")
        batch_size = Variable.get("batch_size")
        context = get_current_context()
        # The password itself would be masked in the log: show that it arrived through its digest.
        digest = hashlib.sha256(conn.password.encode()).hexdigest()
        print(
            "{MARKER}",
            f"task_owner={{context['task'].owner}}",
            f"description={{context['dag'].description.replace(' ', '_')}}",
            f"conn_type={{conn.conn_type}}",
            f"host={{conn.host}}",
            f"login={{conn.login}}",
            f"port={{conn.port}}",
            f"schema={{conn.schema}}",
            f"password_sha256={{digest}}",
            f"batch_size={{batch_size}}",
        )

    use_secrets()


sidecar_secrets_dag()
"""


def airflow(home: Path, sidecar_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = airflow_env(
        home,
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__SECRETS__BACKEND="sidecar.backend.SidecarSecretsBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"url": sidecar_url, "token": TOKEN}),
    )
    return subprocess.run([str(AIRFLOW), *args], env=env, cwd=home, capture_output=True, text=True, timeout=180)


def test_dags_test_reads_variables_and_connections_through_the_sidecar(aws: AwsEmulator, tmp_path: Path) -> None:
    aws.put("airflow/variables/dag_owner", OWNER)
    aws.put("airflow/variables/batch_size", BATCH_SIZE)
    aws.put("airflow/connections/warehouse", WAREHOUSE_URI)
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "sidecar_dag.py").write_text(DAG_FILE)

    # No warm-up: every name Airflow asks for reaches AWS on first use, so aws.names shows what was asked.
    with DaemonThread(make_settings(aws, warmup="false")) as sidecar:
        url = sidecar.daemon.url
        migrate = airflow(tmp_path, url, "db", "migrate")
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        run = airflow(tmp_path, url, "dags", "test", DAG_ID)
        requests = served_requests(url)

    output = run.stdout + run.stderr
    task_logs = "".join(path.read_text() for path in (tmp_path / "logs").rglob("*") if path.is_file())
    assert run.returncode == 0, output
    assert "Unable to retrieve" not in output + task_logs, output  # Airflow's note of a failing backend
    assert "SidecarError" not in output + task_logs, output
    lines = [line for line in (output + task_logs).splitlines() if MARKER in line]
    assert lines, f"the task did not print its marker:\n{output}\n{task_logs}"
    printed = dict(word.split("=", 1) for word in lines[0].split(MARKER, 1)[1].split())
    assert printed == {
        "task_owner": OWNER,  # the parse-time Variable, through default_args
        "description": f"owned_by_{OWNER}",
        "conn_type": "postgres",
        "host": "warehouse.example.com",
        "login": "etl",
        "port": "5432",
        "schema": "analytics",
        "password_sha256": hashlib.sha256(WAREHOUSE_PASSWORD.encode()).hexdigest(),
        "batch_size": BATCH_SIZE,  # the run-time Variable
    }
    # No line of the run, ours or Airflow's, holds it; but Airflow 3.0's task runner logs its own
    # request to mask it (`MaskSecret(value=...)`, at debug level): that line is Airflow's to fix.
    leaked = [line for line in (output + task_logs).splitlines() if WAREHOUSE_PASSWORD in line]
    assert [line for line in leaked if "type='MaskSecret'" not in line] == [], leaked

    # The daemon answered them, and each name reached AWS once: later parses and the task hit the cache.
    assert requests.get(("variables", "200"), 0) >= 2, requests
    assert requests.get(("connections", "200"), 0) >= 1, requests
    for name in ("airflow/variables/dag_owner", "airflow/variables/batch_size", "airflow/connections/warehouse"):
        assert aws.names.count(name) == 1, aws.names
