"""The fleet simulation's fast form (`make fleet` runs it at a thousand pods): the same scenarios
with 60 pods, checked. The simulated clock is checked too: a daemon's timers run in simulated
seconds, not real ones."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests import fleet


def test_simulated_time_jumps_to_the_next_timer():
    async def an_hour() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - start

    started = time.perf_counter()
    assert fleet.run_simulated(an_hour()) == pytest.approx(3600)
    assert time.perf_counter() - started < 60  # a generous deadline: the hour is simulated


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict]:
    found = fleet.run(fleet.QUICK)
    return {(r["scenario"].split(" ", 1)[1], fleet._settings_label(r["settings"])): r for r in found}


def test_no_scenario_fails_a_lookup_or_answers_wrong(results):
    assert len(results) == len(fleet.SCENARIOS)
    for name, result in results.items():
        assert result["lookups"] > 0, name
        assert (result["failed_lookups"], result["wrong_answers"]) == (0, 0), (name, result["first_failures"])


def test_every_started_pod_serves_and_a_spread_start_is_never_throttled(results):
    for (name, settings), result in results.items():
        if not result["pods_started"]:  # the steady state, the node daemons: started before the count
            pass
        elif name.startswith("task pods"):  # a task pod may be gone before a warm-up would end
            assert result["all_tasks_answered_after_s"] is not None, name
        else:
            assert result["all_serving_after_s"] is not None, name
        if settings.startswith("SIDECAR_WARMUP_JITTER="):
            jitter = float(settings.split("=")[1])
            assert result["throttled"] == {}, name
            assert all(peak <= result["quota_per_s"][api] for api, peak in result["peak_per_s"].items()), name
            assert result["all_warm_after_s"] is not None and result["all_warm_after_s"] <= jitter + 1, name


def test_task_pods_without_warm_up_call_only_get_secret_value(results):
    lazy = results["task pods an hour, 3 reads each", "SIDECAR_WARMUP=false"]
    warm = results["task pods an hour, 3 reads each", "defaults"]
    assert set(lazy["calls"]) == {"GetSecretValue"}
    assert lazy["calls_per_day"] < warm["calls_per_day"]


def test_events_cut_the_steady_fleets_secrets_manager_calls_and_price_the_queues(results):
    pull = results["state, 60 pods", "defaults"]
    push = next(r for (name, _), r in results.items() if name == "state, 60 pods, events on")
    assert push["calls"].get("ListSecrets", 0) < pull["calls"]["ListSecrets"]
    assert push["calls_per_day"] < pull["calls_per_day"]
    costs = {row["mode"].split()[0]: row for row in fleet.push_costs(list(results.values()))}
    assert costs["pull"]["sqs_requests_per_day"] == 0
    assert costs["push"]["sqs_requests_per_day"] == 60 * (86400 / 20 + 86400 / 300)
    assert costs["push"]["usd_per_day"] > costs["push"]["secrets_manager_calls_per_day"] / 10_000 * 0.05
