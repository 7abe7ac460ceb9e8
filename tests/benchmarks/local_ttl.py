"""Choosing `local_ttl`: how often real Airflow asks again for what it just asked, and how soon.

    .venv/bin/python -m tests.benchmarks.local_ttl [--quick] [--output PATH]     (part of make bench-defaults)

For each candidate `local_ttl`, one `airflow dags test` of the DAG in tests/test_dag.py (a Variable
read at parse time, a Connection and a Variable in its task) through the backend, against a real
daemon in front of moto. The daemon counts the lookups that reached it; with `local_ttl` 0 every
lookup of the run reaches it, so the difference is what each lifetime answered in the process.
Every run checks the values the task printed; a wrong one fails the run. Beside each: what it adds
to every bound docs/faults.md states (a change reaches Airflow up to `local_ttl` later).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.report import table, write_figures
from tests.support import FAKE_AWS_ENV, TOKEN, AwsEmulator, DaemonThread, airflow_env, make_settings, served_requests
from tests.test_dag import AIRFLOW, BATCH_SIZE, DAG_FILE, DAG_ID, MARKER, OWNER, WAREHOUSE_URI

CANDIDATES = (0, 1, 5, 30)  # s
QUICK = (0, 5)  # s: every lookup asked, and the default
DEFAULT_OUTPUT = Path(__file__).with_name("results") / "local_ttl.json"
EXPECTED = (f"task_owner={OWNER}", "host=warehouse.example.com", f"batch_size={BATCH_SIZE}")


def _airflow(home: Path, url: str, local_ttl: float, *args: str) -> subprocess.CompletedProcess[str]:
    env = airflow_env(
        home,
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__SECRETS__BACKEND="sidecar.backend.SidecarSecretsBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"url": url, "token": TOKEN, "local_ttl": local_ttl}),
    )
    return subprocess.run([str(AIRFLOW), *args], env=env, cwd=home, capture_output=True, text=True, timeout=300)


def measure(candidates: tuple[float, ...] = CANDIDATES) -> list[dict[str, Any]]:
    os.environ.update(FAKE_AWS_ENV)  # the daemon's client: nothing here may reach AWS
    aws = AwsEmulator()
    aws.start()
    try:
        aws.put("airflow/variables/dag_owner", OWNER)
        aws.put("airflow/variables/batch_size", BATCH_SIZE)
        aws.put("airflow/connections/warehouse", WAREHOUSE_URI)
        with tempfile.TemporaryDirectory(prefix="local-ttl-") as scratch, DaemonThread(make_settings(aws)) as daemon:
            home, url = Path(scratch), daemon.daemon.url
            (home / "dags").mkdir()
            (home / "dags" / "sidecar_dag.py").write_text(DAG_FILE)
            migrate = _airflow(home, url, 0, "db", "migrate")
            if migrate.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
            results = []
            for local_ttl in candidates:
                shutil.rmtree(home / "logs", ignore_errors=True)  # only this run's task logs are checked
                before = sum(served_requests(url).values())
                started = time.perf_counter()
                run = _airflow(home, url, local_ttl, "dags", "test", DAG_ID)
                wall = time.perf_counter() - started
                logs = "".join(path.read_text() for path in (home / "logs").rglob("*") if path.is_file())
                printed = [line for line in (run.stdout + run.stderr + logs).splitlines() if MARKER in line]
                if run.returncode != 0 or not printed or not all(word in printed[-1] for word in EXPECTED):
                    raise RuntimeError(f"dags test with local_ttl {local_ttl} failed or read wrong values")
                requests = sum(served_requests(url).values()) - before
                results.append({"local_ttl_s": local_ttl, "daemon_requests": requests, "wall_s": wall})
    finally:
        aws.stop()
    lookups = results[0]["daemon_requests"]  # local_ttl 0: every lookup reached the daemon
    for result in results:
        result["lookups"] = lookups
        result["answered_in_process"] = lookups - result["daemon_requests"]
        result["adds_to_every_bound_s"] = result["local_ttl_s"]
    return results


def render(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            f"{r['local_ttl_s']:g}",
            r["lookups"],
            r["daemon_requests"],
            r["answered_in_process"],
            f"{r['wall_s']:.1f}",
            f"+{r['adds_to_every_bound_s']:g}",
        ]
        for r in results
    ]
    return table(
        "local_ttl: one `airflow dags test` (a Variable at parse time, a Connection and a Variable in the task)",
        ["local_ttl, s", "lookups", "asked of the daemon", "answered in the process", "run, s", "bounds, s"],
        rows,
        ["lookups: the daemon's count with local_ttl 0, where each lookup reaches it"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.local_ttl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"local_ttl {' and '.join(map(str, QUICK))} only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator would log every request
    results = measure(QUICK if args.quick else CANDIDATES)
    print(render(results))
    write_figures(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
