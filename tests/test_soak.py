"""The soak's 20-second form: the daemon as a process, two Airflow-like clients, AWS flapping.

`make soak` runs the full minute (`python -m tests.soak`); this runs the same checks for 20 s,
so a wrong value, an undocumented status, a stale answer after recovery, a created secret not
served within its bound, memory or fds growing after warm-up by more than the noise (the
daemon's RSS and fds per phase) or an unclean exit fails `make test` too. ListSecrets lags the
whole run, so freshness rests on the listing's diff and on the misses asked again by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("events", [False, True], ids=["listing", "events"])
def test_the_short_soak_passes(tmp_path: Path, events: bool) -> None:
    """With events the bounds use the backstop listing's longer interval: 25 s leaves each fault a second."""
    output = tmp_path / "soak.json"
    seconds = ["--seconds", "25", "--events"] if events else ["--seconds", "20"]
    command = [sys.executable, "-m", "tests.soak", *seconds, "--clients", "2", "--json", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["lookups"] > 0
    assert report["wrong_values"] == 0
    assert report["failures"] == []
    checked = report["answers_checked"]  # the checks ran, on answers that could have failed them
    assert report["rotations_before_recovery"] > 0 and checked["freshness_after_recovery"] > 0
    assert report["creations"] > 0 and report["creations_before_recovery"] > 0
    assert checked["created_keys_before_creation"] > 0  # asked for before they existed...
    assert report["created_keys_asked_before_then_served"] > 0  # ...then served within the bound
    assert checked["created_keys_within_bound"] > 0 and report["created_not_served"] == 0
    assert checked["never_existing_keys"] > 0
    memory = {phase["phase"]: phase for phase in report["daemon_resources"]["phases"]}
    assert list(memory) == ["warming", "rest"]  # the rest was checked for growth (failures above)
    if events:
        assert report["events"]["published"] > 0 and report["events"]["dropped"] > 0
        assert report["events"]["queues_left"] == []
        assert report["daemon_metrics"]['sidecar_events_received_total{outcome="accepted"}'] > 0
