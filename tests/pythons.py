"""`make test-pythons`: the README's two commands on every Python it names, each in a virtualenv of
its own made by the Makefile itself, as a new user's `make` would: pyenv's 3.10, 3.11, 3.12 and 3.13,
and Debian's own python3 (3.11.2 on Debian 12).

For each: `make demo` is started, the curl it prints is asked, and Ctrl-C ends it; then `make test`'s
install runs (every dependency of the suite resolved for that Python) and the suite's dependencies
are imported. The suite itself runs once, on the lowest Python, in CI (`.ci/run` takes it from
`--lowest`); `--full` runs it whole on the versions named as well.

    python3 -m tests.pythons [--full 3.10 3.11.2 ...] [--only PYTHON ...]
    python3 -m tests.pythons --lowest      # prints the lowest interpreter's path
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINORS = ("3.10", "3.11", "3.12", "3.13")  # pyenv's
SYSTEM_PYTHON = "/usr/bin/python3"
DEMO_DEADLINE = 900  # s: a first `make demo` creates the venv and installs the demo extra
CURL = re.compile(r"curl -s -H 'X-Sidecar-Token: (\S+)' (http://\S+)/v1/variables/greeting")


def pyenv_python(minor: str) -> str | None:
    """pyenv's newest interpreter of this minor release, if pyenv has one."""
    if not shutil.which("pyenv"):
        return None
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    candidates = sorted(Path(root, "versions").glob(f"{minor}.*/bin/python{minor}"), key=lambda p: _key(p.parts[-3]))
    return str(candidates[-1]) if root and candidates else None


def interpreters() -> dict[str, str]:
    """Version -> interpreter, for pyenv's minors and Debian's own; fails naming what is missing."""
    found: dict[str, str] = {}
    for minor in MINORS:
        python = pyenv_python(minor)
        if python is None:
            sys.exit(f"no Python {minor}: install it (pyenv install {minor}) or run with --only")
        found[version_of(python)] = python
    if os.access(SYSTEM_PYTHON, os.X_OK):
        found.setdefault(version_of(SYSTEM_PYTHON), SYSTEM_PYTHON)
    return found


def version_of(python: str) -> str:
    code = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def make(python: str, version: str, *targets: str, **extra: str) -> list[str]:
    variables = {"PYTHON": python, "VENV": f".venv-py{version}", **extra}
    return ["make", "--no-print-directory", *targets, *(f"{name}={value}" for name, value in variables.items())]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo(python: str, version: str) -> str:
    """`make demo`, asked what its banner says to ask, then Ctrl-C; returns what it answered."""
    process = subprocess.Popen(
        make(python, version, "demo", DEMO_PORT=str(free_port())),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C reaches make and the demo, as in a terminal
    )
    assert process.stdout is not None
    deadline = time.monotonic() + DEMO_DEADLINE
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            match = CURL.search(line)
            if match:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"make demo printed no curl within {DEMO_DEADLINE}s")
        else:
            raise AssertionError(f"make demo ended (exit {process.wait()}) before its banner:\n{''.join(seen[-20:])}")
        token, url = match.groups()
        request = urllib.request.Request(f"{url}/v1/variables/greeting", headers={"X-Sidecar-Token": token})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())["value"]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            status = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("make demo did not end within 30 s of Ctrl-C") from None
    assert status in (0, 2, -signal.SIGINT, 130), f"make demo ended with {status} after Ctrl-C"  # make says 2
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", nargs="*", default=[], help="versions that also run make test whole")
    parser.add_argument("--only", nargs="*", help="these interpreters instead of pyenv's and Debian's")
    parser.add_argument("--lowest", action="store_true", help="print the lowest interpreter's path, and stop")
    args = parser.parse_args()
    found = {version_of(python): python for python in args.only} if args.only else interpreters()
    if args.lowest:
        print(found[min(found, key=_key)])
        return 0
    full = set(args.full)
    rows = []
    for version, python in sorted(found.items(), key=lambda item: _key(item[0])):
        started = time.monotonic()
        answer = demo(python, version)
        assert answer.startswith("hello from AWS Secrets Manager"), answer
        target = "test" if version in full else f".venv-py{version}/.dev-installed"
        print(f"== Python {version}: make demo answered; make {target}", flush=True)
        result = subprocess.run(make(python, version, target), cwd=ROOT)
        if result.returncode != 0:
            print(f"Python {version}: make {target} failed ({result.returncode})", file=sys.stderr)
            return 1
        if target != "test":  # installed: every module the suite imports, imported
            check = [
                f".venv-py{version}/bin/python",
                "-c",
                "import airflow, moto, hypothesis, sidecar.daemon.lifecycle",
            ]
            subprocess.run(check, cwd=ROOT, check=True)
        rows.append((version, python, "make test" if target == "test" else "installed", time.monotonic() - started))
    print("\n| Python | interpreter | make demo | make test | seconds |\n|---|---|---|---|---:|")
    for version, python, test, seconds in rows:
        print(f"| {version} | {python} | answered | {test} | {seconds:.0f} |")
    return 0


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


if __name__ == "__main__":
    sys.exit(main())
