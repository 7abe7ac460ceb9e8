"""`make dist`'s checks of what it built, after `twine check --strict`: the wheel and the sdist carry
the license and the version of sidecar/__init__.py, and the wheel, installed alone into a fresh
virtualenv with no package index, gives Airflow a backend that needs nothing but the standard
library and Airflow's base class.

    .venv/bin/python tests/dist/check_dist.py dist

Prints one line per problem and exits 1, or one line saying what was checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "airflow-secrets-sidecar"
STEM = NAME.replace("-", "_")  # as wheel and sdist file names spell it
LICENSE = (ROOT / "LICENSE").read_bytes()

# Run by the wheel's own interpreter, from an empty directory (no checkout on sys.path). Airflow is
# the one thing the backend imports besides the standard library and itself: the Airflow image has
# it; here a stand-in holds its base class, so anything else the import reached shows up as foreign.
PROBE = """
import importlib.metadata, json, sys, types
import sidecar, sidecar.client
airflow, secrets = types.ModuleType("airflow"), types.ModuleType("airflow.secrets")
secrets.BaseSecretsBackend = type("BaseSecretsBackend", (), {})
airflow.secrets = secrets
sys.modules.update({"airflow": airflow, "airflow.secrets": secrets})
import sidecar.backend
tops = {name.partition(".")[0] for name in sys.modules} - {"__main__", "sidecar", "airflow"}
print(json.dumps({
    "file": sidecar.__file__,
    "version": sidecar.__version__,
    "metadata_version": importlib.metadata.version("airflow-secrets-sidecar"),
    "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
    "foreign": sorted(tops - set(sys.stdlib_module_names)),
}))
"""


def source_version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "sidecar" / "__init__.py").read_text(), re.MULTILINE)
    assert found, "sidecar/__init__.py has no __version__ line"
    return found.group(1)


def the_one(dist: Path, pattern: str) -> Path | str:
    """The single file of dist matching pattern, or a problem."""
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        return f"{dist}: expected exactly one {pattern}, found {[path.name for path in found]}"
    return found[0]


def metadata_problems(where: str, text: str, version: str) -> list[str]:
    metadata = Parser().parsestr(text)
    problems = []
    if metadata["Version"] != version:
        problems.append(f"{where}: Version {metadata['Version']}, sidecar.__version__ is {version}")
    if metadata["License-Expression"] != "Apache-2.0":
        problems.append(f"{where}: License-Expression {metadata['License-Expression']!r}, not 'Apache-2.0'")
    if "LICENSE" not in (metadata.get_all("License-File") or []):
        problems.append(f"{where}: no License-File: LICENSE")
    # The plain package is the backend alone: every requirement belongs to an extra.
    unconditional = [req for req in metadata.get_all("Requires-Dist") or [] if "extra ==" not in req]
    if unconditional:
        problems.append(f"{where}: dependencies outside any extra: {unconditional}")
    return problems


def archive_problems(
    name: str, names: set[str], read: Callable[[str], bytes], metadata: str, license: str, version: str
) -> list[str]:
    """One built archive: its metadata, and LICENSE inside it as the repository has it."""
    if metadata not in names:
        return [f"{name}: no {metadata} (is it of another version?)"]
    problems = metadata_problems(name, read(metadata).decode(), version)
    if license not in names:
        problems.append(f"{name}: no {license}")
    elif read(license) != LICENSE:
        problems.append(f"{name}: {license} differs from LICENSE")
    return problems


def wheel_problems(wheel: Path, version: str) -> list[str]:
    info = f"{STEM}-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        return archive_problems(
            wheel.name, names, archive.read, f"{info}/METADATA", f"{info}/licenses/LICENSE", version
        )


def sdist_problems(sdist: Path, version: str) -> list[str]:
    top = f"{STEM}-{version}"
    with tarfile.open(sdist) as archive:

        def read(member: str) -> bytes:
            return archive.extractfile(member).read()  # type: ignore[union-attr]

        return archive_problems(sdist.name, set(archive.getnames()), read, f"{top}/PKG-INFO", f"{top}/LICENSE", version)


def installed_problems(wheel: Path, version: str) -> list[str]:
    """The wheel alone in a fresh virtualenv, installed with no index: a dependency would fail it."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not uv:
        return ["no uv next to this Python or on PATH: run make dist, whose venv has it"]
    with tempfile.TemporaryDirectory(prefix="check-dist-") as scratch:
        venv, empty = Path(scratch) / "venv", Path(scratch) / "cwd"
        empty.mkdir()
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        install = subprocess.run(
            [uv, "pip", "install", "-q", "--no-index", "--python", str(python), str(wheel)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if install.returncode != 0:
            return [f"installing {wheel.name} alone, with no index, failed: {install.stderr.strip()}"]
        probe = subprocess.run([python, "-I", "-c", PROBE], cwd=empty, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            return [f"importing sidecar.backend from the installed wheel failed: {probe.stderr.strip()}"]
        seen = json.loads(probe.stdout)
        cli = subprocess.run([venv / "bin" / NAME, "--version"], cwd=empty, capture_output=True, text=True, timeout=60)
        problems = []
        if not Path(seen["file"]).resolve().is_relative_to(venv.resolve()):
            problems.append(f"sidecar was imported from {seen['file']}, not from the fresh virtualenv")
        if {seen["version"], seen["metadata_version"]} != {version}:
            problems.append(
                f"installed: sidecar.__version__ {seen['version']}, metadata {seen['metadata_version']}; "
                f"the source says {version}"
            )
        if seen["distributions"] != [NAME]:
            problems.append(f"the fresh virtualenv holds {seen['distributions']}, not {NAME} alone")
        if seen["foreign"]:
            problems.append(
                f"importing sidecar.backend loaded modules from outside the standard library: {seen['foreign']}"
            )
        if cli.returncode != 0 or cli.stdout.strip() != f"{NAME} {version}":
            problems.append(f"{NAME} --version in the fresh virtualenv: {(cli.stdout + cli.stderr).strip()!r}")
    return problems


def main(argv: list[str]) -> int:
    dist = Path(argv[0] if argv else "dist")
    version = source_version()
    wheel, sdist = the_one(dist, f"{STEM}-*.whl"), the_one(dist, f"{STEM}-*.tar.gz")
    problems = [found for found in (wheel, sdist) if isinstance(found, str)]
    if not problems:
        problems = wheel_problems(wheel, version) + sdist_problems(sdist, version)
    if not problems:
        problems = installed_problems(wheel, version)
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"check_dist: {wheel.name} and {sdist.name}: version {version}, LICENSE in both; the wheel alone in a "
        "fresh virtualenv imports sidecar.backend and sidecar.client with only the standard library"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
