"""`make test-airflow2`: the daemon (this Airflow 3 environment) in front of moto, Airflow 2.10 reading through it.

    .venv/bin/python -m tests.airflow2.run      # AIRFLOW2_PYTHON: the 2.10 interpreter (default .venv-airflow2)

Starts the AWS emulation, stores check_backend.SECRETS, starts the daemon on a free port, runs
`check_backend.py` with the Airflow 2.10 interpreter and exits with its code (or 1 if the daemon was
never asked for the secrets).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from tests.airflow2.check_backend import SECRETS
from tests.support import FAKE_AWS_ENV, REGION, TOKEN, AwsEmulator, DaemonThread, make_settings

REPO = Path(__file__).resolve().parents[2]
CHECK = Path(__file__).with_name("check_backend.py")


def main() -> int:
    python = os.environ.get("AIRFLOW2_PYTHON") or str(REPO / ".venv-airflow2" / "bin" / "python")
    if not Path(python).exists():
        print(f"no Airflow 2.10 interpreter at {python}: run `make test-airflow2` (or set AIRFLOW2_PYTHON)")
        return 2
    os.environ.update(FAKE_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    aws = AwsEmulator()
    aws.start()
    try:
        for name, value in SECRETS.items():
            aws.put(name, value)
        # No warm-up: every name Airflow asks for reaches AWS once, so aws.names shows what was asked.
        with DaemonThread(make_settings(aws, warmup="false")) as sidecar:
            env = {name: value for name, value in os.environ.items() if not name.startswith("SIDECAR_")}
            env.update(AIRFLOW2_CHECK_URL=sidecar.daemon.url, AIRFLOW2_CHECK_TOKEN=TOKEN)
            # For autostart: this environment's daemon, against the same emulation.
            kwargs = json.dumps({"region_name": REGION, "endpoint_url": aws.endpoint})
            daemon = str(Path(sys.executable).with_name("airflow-secrets-sidecar"))
            env.update(AIRFLOW2_CHECK_DAEMON=daemon, AIRFLOW2_CHECK_DAEMON_KWARGS=kwargs)
            code = subprocess.run([python, str(CHECK)], env=env, cwd=REPO, timeout=300).returncode
        asked = set(aws.names)
    finally:
        aws.stop()
    if code == 0 and not set(SECRETS) <= asked:
        print(f"FAILED: the daemon never asked AWS for {sorted(set(SECRETS) - asked)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
