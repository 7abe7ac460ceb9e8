"""CI's gate cannot lose a stage by accident: every `make` target `.ci/run` names exists."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE = re.compile(r"\bmake ([^|;&)]*)")


def targets_in(script: str) -> set[str]:
    """The targets of each `make` command in a shell script: VAR=value words and flags left out."""
    found = set()
    for line in script.splitlines():
        if not line.lstrip().startswith("#"):
            for words in MAKE.findall(line):
                found.update(w for w in shlex.split(words) if "=" not in w and not w.startswith("-"))
    return found


def test_the_parser_finds_targets_and_leaves_variables_out():
    script = 'stage x make test PYTHON="$lowest" || failed=1\n# make commented-out\nstage y make bench QUICK=1\n'
    assert targets_in(script) == {"test", "bench"}


def test_every_make_target_ci_runs_exists():
    targets = targets_in((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert {"test", "test-pythons", "test-airflow-versions", "bench"} <= targets
    for target in sorted(targets):
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"make {target}, named in .ci/run: {dry.stderr.strip()}"
