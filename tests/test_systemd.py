"""deploy/systemd/: the unit's settings, and its command run for real with the example env file: a
daemon Airflow's backend reads a secret from with the token file, that `probe` and `get` find as
docs/deployment.md shows, and that exits 0 on SIGTERM, so Restart=on-failure leaves a stopped unit
stopped. What systemd itself says of the unit (`systemd-analyze verify` and `security`) is in
tests/systemd/systemd_checks.py, which needs systemd's tools (`make test-systemd`)."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.daemon.settings import _is_loopback, load_settings
from tests.support import REGION, AwsEmulator, free_port
from tests.test_cli import Process, sidecar_env

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "airflow-secrets-sidecar.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "airflow-secrets-sidecar.env"
# Where docs/deployment.md ("A plain VM (systemd)") installs each part.
INSTALLED_BIN = "/opt/airflow-secrets-sidecar/bin/"
INSTALLED_ENV = "/etc/airflow-secrets-sidecar/env"
INSTALLED_TOKEN = "/etc/airflow-secrets-sidecar/token"
USER = "airflow-secrets-sidecar"
# This checkout's daemon stands in for the installed one.
VENV_BIN = f"{Path(sys.executable).parent}/"
TIMEOUT = 60.0


def service() -> dict[str, list[str]]:
    """The [Service] section: each key with its values in order (SystemCallFilter= comes twice)."""
    section, found = "", {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Service]" and line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def env_file() -> dict[str, str]:
    """The env file as systemd reads it: comments and blank lines skipped, NAME=value, a value in
    single quotes taken as written."""
    values = {}
    for number, line in enumerate(ENV_FILE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        name, _, raw = line.partition("=")
        words = shlex.split(raw)
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) and len(words) == 1, f"{ENV_FILE.name}:{number}: quote it"
        values[name] = words[0]
    return values


def runnable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart on this checkout's daemon: `verify` refuses a command that does not exist."""
    path = tmp_path / UNIT.name
    path.write_text((text or UNIT.read_text()).replace(f"ExecStart={INSTALLED_BIN}", f"ExecStart={VENV_BIN}"))
    return path


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


# --- the unit ---


def test_the_unit_runs_the_installed_daemon_as_its_own_user_with_the_env_file() -> None:
    settings = service()
    assert settings["ExecStart"] == [f"{INSTALLED_BIN}airflow-secrets-sidecar serve"]
    assert settings["EnvironmentFile"] == [INSTALLED_ENV]
    assert settings["User"] == settings["Group"] == [USER]
    # The daemon does not speak sd_notify: `notify` would time out, `simple` hides a failed exec.
    assert settings["Type"] == ["exec"]
    assert settings["Restart"] == ["on-failure"]
    # Secrets neither in core dumps nor in files anyone else can read.
    assert settings["LimitCORE"] == ["0"] and settings["UMask"] == ["0077"]


def test_a_configuration_error_exits_2_which_the_unit_does_not_restart() -> None:
    """A restart cannot fix a bad setting: the unit stops, the journal keeps its one line."""
    assert service()["RestartPreventExitStatus"] == ["2"]
    command = shlex.split(service()["ExecStart"][0].replace(INSTALLED_BIN, VENV_BIN))
    env = sidecar_env(**{**env_file(), "SIDECAR_TTL": "soon"})
    result = run(command, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "SIDECAR_TTL" in result.stderr, result.stderr


# --- the env file, and the unit's command run with it ---


def test_the_env_file_is_what_the_daemon_loads() -> None:
    values = env_file()
    assert values.pop("SIDECAR_TOKEN_FILE") == INSTALLED_TOKEN
    settings = load_settings(argparse.Namespace(), {**values, "SIDECAR_TOKEN": "t" * 32})
    assert _is_loopback(settings.host) and (settings.port, settings.metrics_port) == (2779, 9779)


def test_the_units_command_serves_airflow_and_stops_with_0(tmp_path: Path, aws: AwsEmulator) -> None:
    backend_module = pytest.importorskip("sidecar.backend")  # needs apache-airflow or its Task SDK
    aws.put("airflow/variables/greeting", "hello from the VM")
    token_file = tmp_path / "token"
    token_file.write_text("vm-token-0123456789abcdef\n")
    token_file.chmod(0o640)
    values = env_file()
    kwargs = {**json.loads(values["SIDECAR_BACKEND_KWARGS"]), "region_name": REGION, "endpoint_url": aws.endpoint}
    port, metrics_port = free_port(), free_port()
    # Where this test can listen, its emulated AWS, its token; the rest as the file has it.
    values.update(
        SIDECAR_PORT=str(port),
        SIDECAR_METRICS_PORT=str(metrics_port),
        SIDECAR_METRICS_HOST="127.0.0.1",
        SIDECAR_TOKEN_FILE=str(token_file),
        SIDECAR_BACKEND_KWARGS=json.dumps(kwargs),
    )
    env = sidecar_env(**values)
    command = shlex.split(service()["ExecStart"][0].replace(INSTALLED_BIN, VENV_BIN))
    with (tmp_path / "journal").open("w+") as log:
        process = Process(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        try:
            process.wait_until_healthy(lambda: http.client.HTTPConnection("127.0.0.1", metrics_port))
            # airflow.cfg's [secrets] backend_kwargs, as docs/deployment.md writes them for a VM.
            backend = backend_module.SidecarSecretsBackend(url=f"http://127.0.0.1:{port}", token_file=str(token_file))
            assert backend.get_variable("greeting") == "hello from the VM"
            # The checks docs/deployment.md gives, on the default address there (this test's port here).
            cli = f"{VENV_BIN}airflow-secrets-sidecar"
            probe = run([cli, "probe"], env=sidecar_env(SIDECAR_PORT=str(port)))
            assert probe.returncode == 0, probe.stderr
            get = run(
                [cli, "get", "variables", "greeting"],
                env=sidecar_env(SIDECAR_PORT=str(port), SIDECAR_TOKEN_FILE=str(token_file)),
            )
            assert get.stdout.strip() == "hello from the VM", get.stderr
            process.signal(signal.SIGTERM)  # systemctl stop
            assert process.wait() == 0, process.output()
        finally:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(timeout=TIMEOUT)
