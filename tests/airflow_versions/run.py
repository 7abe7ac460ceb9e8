"""`make test-airflow-versions`: the backend under every Airflow minor release Astro Runtime ships
or shipped recently, each in a virtualenv of its own on Python 3.12 where pyenv has it.

Airflow 3.0-3.3: the project's own Airflow test modules, unchanged, run by that version's pytest
(`tests/airflow_versions/airflow-<minor>.txt` pins each environment): real Airflow processes
reading through the backend in both config sections, `airflow dags test` of a DAG that reads a
Variable at parse time and a Connection and a Variable in its task, autostart from fresh Airflow
processes, and the differential corpus against that version's amazon provider. Airflow 2.10:
`tests/airflow2/` in its own Python API (lookups, `airflow dags test`, autostart; the daemon runs
from this environment, and no amazon provider is there for the differential corpus).

    .venv/bin/python -m tests.airflow_versions.run [--only 3.0 3.2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.pythons import pyenv_python

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODULES = ["tests/test_airflow.py", "tests/test_dag.py", "tests/test_autostart.py", "tests/test_differential.py"]
PYTHON_MINOR = "3.12"
# What a release cannot do whatever the backend, so its modules are not run there.
NOT_THERE = {
    "3.0": {
        "tests/test_airflow.py": "Airflow 3.0's Task SDK reads a Variable only inside a supervised task: in a "
        "plain script airflow.sdk.Variable.get raises ImportError (SUPERVISOR_COMMS) for every backend",
    },
}
SUMMARY = re.compile(r"(\d+ (?:passed|failed|error).*?) in [\d.]+s")


def pins(minor: str) -> Path:
    return HERE / f"airflow-{minor}.txt"


def environment(minor: str, python: str) -> Path:
    """.venv-airflow-<minor>, (re)installed when its pins or pyproject.toml changed."""
    venv = ROOT / f".venv-airflow-{minor}"
    stamp = venv / ".installed"
    digest = hashlib.sha256(pins(minor).read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return venv
    # This environment's uv (the Makefile's), so every venv shares its cache: see the Makefile.
    install = [str(Path(sys.executable).with_name("uv")), "pip", "install", "-q", "--compile-bytecode"]
    install += ["--python", str(venv / "bin" / "python")]
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([*install, "-r", str(pins(minor))], check=True)
    subprocess.run([*install, "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(digest)
    return venv


def run_airflow3(minor: str, python: str) -> tuple[str, bool]:
    venv = environment(minor, python)
    skipped = NOT_THERE.get(minor, {})
    for module, reason in skipped.items():
        print(f"Airflow {minor}: {module} not run: {reason}", flush=True)
    modules = [module for module in MODULES if module not in skipped]
    command = [str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q", *modules]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(result.stdout[-3000:], result.stderr[-2000:], sep="\n", flush=True)
    found = SUMMARY.findall(result.stdout)
    summary = found[-1] if found else f"pytest exited {result.returncode}"
    return summary + "".join(f"; {Path(module).name} not run (see above)" for module in skipped), result.returncode == 0


def run_airflow2(python: str) -> tuple[str, bool]:
    variables = ["AIRFLOW2_VENV=.venv-airflow-2.10", f"AIRFLOW2_BASE_PYTHON={python}"]
    command = ["make", "--no-print-directory", "test-airflow2", *variables]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(result.stdout[-2000:], result.stderr[-2000:], sep="\n", flush=True)
    return (result.stdout.strip().splitlines() or ["no output"])[-1], result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    minors = ["2.10", *sorted(path.stem.removeprefix("airflow-") for path in HERE.glob("airflow-*.txt"))]
    parser.add_argument("--only", nargs="*", choices=minors, help="these Airflow minor releases")
    args = parser.parse_args()
    python = pyenv_python(PYTHON_MINOR) or sys.executable
    print(f"Python for the Airflow 3 environments: {python}", flush=True)
    rows, ok = [], True
    for minor in args.only or minors:
        started = time.monotonic()
        print(f"== Airflow {minor}", flush=True)
        summary, passed = run_airflow2(python) if minor == "2.10" else run_airflow3(minor, python)
        ok &= passed
        rows.append((minor, summary, "passed" if passed else "FAILED", time.monotonic() - started))
    print("\n| Airflow | result | pass counts | seconds |\n|---|---|---|---:|")
    for minor, summary, verdict, seconds in rows:
        print(f"| {minor} | {verdict} | {summary} | {seconds:.0f} |")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.pop("VIRTUAL_ENV", None)
    sys.exit(main())
