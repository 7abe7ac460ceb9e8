"""`make test-systemd`: deploy/systemd/airflow-secrets-sidecar.service as systemd reads it
(`systemd-analyze verify`) and scores its sandbox (`systemd-analyze security --offline`), without a
running systemd. The unit's command run for real is in tests/test_systemd.py (`make test`).

systemd-analyze comes with the `systemd` package: where it is missing these fail, naming
tests/systemd/prepare.sh, which installs it on Debian as root (CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_systemd import UNIT, run, runnable_unit

PREPARE = "tests/systemd/prepare.sh"
ACCEPTED_EXPOSURE = ("PERFECT", "SAFE", "OK")


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail(f"systemd-analyze is missing: run {PREPARE} (installs Debian's systemd package, as root)")
    return run(["systemd-analyze", "--no-pager", *args])


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    result = systemd_analyze("verify", "--man=no", str(runnable_unit(tmp_path)))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # A misspelt key is only a warning, with exit 0: the output must be empty, not the exit code 0.
    misspelt = runnable_unit(tmp_path, UNIT.read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = systemd_analyze("verify", "--man=no", str(misspelt))
    assert "ProtectSytem" in result.stdout + result.stderr


def test_the_sandbox_is_rated_ok_or_better(tmp_path: Path) -> None:
    result = systemd_analyze("security", "--offline=yes", str(runnable_unit(tmp_path)))
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert overall, result.stdout + result.stderr
    print(f"\nsystemd-analyze security: exposure {overall[1]} {overall[2]}")
    assert overall[2] in ACCEPTED_EXPOSURE, result.stdout
