"""The soak's 20-second form: the daemon as a process, two Airflow-like clients, AWS flapping.

`make soak` runs the full minute (`python -m tests.soak`); this runs the same checks for 20 s,
so a wrong value, an undocumented status, a stale answer after recovery, a leak or an unclean
exit fails `make test` too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_20_second_soak_passes(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    command = [sys.executable, "-m", "tests.soak", "--seconds", "20", "--clients", "2", "--json", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["lookups"] > 0
    assert report["wrong_values"] == 0
    assert report["failures"] == []
