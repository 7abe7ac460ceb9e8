"""The DAG of `make test-astro` (tests/astro/astro_checks.py): each Airflow component reads a secret
through the sidecar backend. The test writes expected.json beside this file: the values it put in AWS
(passwords as SHA-256 digests). Any wrong value fails: at parse time as an import error, in a task as
a failed task."""

from __future__ import annotations

import json
from pathlib import Path

import pendulum
from airflow.sdk import DAG, BaseHook, BaseOperator, Variable, task
from sidecar_astro_trigger import ConnectionTrigger, described  # plugins/: on every component's path

EXPECTED = json.loads((Path(__file__).parent / "expected.json").read_text())


def check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise ValueError(f"{what}: got {got!r}, expected {expected!r}")


# Parse time, in the dag-processor's container.
check("Variable astro_parse_time at parse time", Variable.get("astro_parse_time"), EXPECTED["astro_parse_time"])


class ConnectionInTheTriggerer(BaseOperator):
    """Defers to a trigger that reads a Connection in the triggerer's container, then checks it."""

    def execute(self, context):
        self.defer(trigger=ConnectionTrigger(conn_id="astro_api"), method_name="resume")

    def resume(self, context, event):
        check("Connection astro_api read by the trigger", event, EXPECTED["astro_api"])
        print("ASTRO-SIDECAR: the triggerer read astro_api")


with DAG(
    dag_id="astro_sidecar",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["airflow-secrets-sidecar"],
):

    @task
    def read_secrets() -> None:
        # A task's process, in the scheduler's container (LocalExecutor).
        warehouse = BaseHook.get_connection("astro_warehouse")
        check("Connection astro_warehouse", described(warehouse), EXPECTED["astro_warehouse"])
        check("Variable astro_task_time", Variable.get("astro_task_time"), EXPECTED["astro_task_time"])
        # In no backend of the task's: the lookup goes on to the API server, whose own backend asks
        # the api-server container's daemon.
        check("Variable astro_absent", Variable.get("astro_absent", default=None), None)
        print("ASTRO-SIDECAR: the task read astro_warehouse and astro_task_time")

    read_secrets() >> ConnectionInTheTriggerer(task_id="connection_in_the_triggerer")
