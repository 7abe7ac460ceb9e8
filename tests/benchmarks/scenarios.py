"""The three scenarios. Each returns plain data (for the JSON file); run.py prints the tables.

Every scenario checks the values it reads and raises `WrongValue` on a wrong one: a benchmark
that measured wrong answers measured nothing. Timings are reported, never judged.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.daemon.lifecycle import Daemon
from tests.benchmarks.child import RESULT_MARK
from tests.benchmarks.emulator import SlowAwsEmulator
from tests.benchmarks.report import median, summarize_us
from tests.benchmarks.sidecar_process import sidecar_process
from tests.benchmarks.workload import VARIABLES, day_workload, fresh_process_workload
from tests.support import REGION, FakeClock, make_settings, resolved

CHILD = str(Path(__file__).with_name("child.py"))
CHILD_TIMEOUT = 300.0

Progress = Callable[[str], None]


class WrongValue(AssertionError):
    """A backend returned a value other than the one stored: the benchmark is void."""


def stock_kwargs(aws: SlowAwsEmulator) -> dict[str, str]:
    return {"region_name": REGION, "endpoint_url": aws.endpoint}


def run_child(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run child.py with `spec`; its result plus `wall_s`, spawn to exit as the parent sees it."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, CHILD, json.dumps(spec)], env=env, capture_output=True, timeout=CHILD_TIMEOUT, check=False
    )
    wall = time.perf_counter() - started
    stderr = done.stderr.decode("utf-8", "replace")
    if done.returncode == 3:
        raise WrongValue(stderr.strip().splitlines()[-1])
    lines = [line for line in done.stdout.decode("utf-8", "replace").splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['backend']} child process failed ({done.returncode}):\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    result["wall_s"] = wall
    return result


# --- 1. warm lookups in one process ---


def warm_latency(
    aws: SlowAwsEmulator, sidecar_url_kwargs: dict[str, Any], env: dict[str, str], *, n_stock: int, n_sidecar: int
) -> dict[str, Any]:
    """get_variable of a present and an absent key, timed call by call after a few warm-up calls."""
    secrets, lookups = fresh_process_workload()
    kind, key, value = lookups[0]
    assert kind == "variables" and secrets[VARIABLES + key] == value
    missing = "bench_never_created"
    out: dict[str, Any] = {}
    for backend, kwargs, n in (
        ("stock", stock_kwargs(aws), n_stock),
        ("stock_use_cache", stock_kwargs(aws), n_stock),  # an absent key still calls AWS every time
        ("aws_caching", stock_kwargs(aws), n_sidecar),
        ("sidecar_round_trip", {**sidecar_url_kwargs, "local_ttl": 0}, n_sidecar),  # every lookup asks the daemon
        ("sidecar", sidecar_url_kwargs, n_sidecar),  # local_ttl at its default
    ):
        warmup = 3
        aws.clear_counts()
        spec = {
            "mode": "latency",
            "backend": backend,
            "kwargs": kwargs,
            "existing": [key, value],
            "missing": [missing, None],
            "n": n,
            "warmup": warmup,
        }
        result = run_child(spec, env)
        calls = aws.snapshot("sidecar" if backend.startswith("sidecar") else "stock")  # boto3 for the others
        lookups_done = 2 * (n + warmup)
        out[backend] = {
            "existing": summarize_us(result["existing"]),
            "missing": summarize_us(result["missing"]),
            "aws_calls": calls,
            "lookups": lookups_done,
            "aws_calls_per_lookup": sum(calls.values()) / lookups_done,
        }
    return out


# --- 2. fresh processes ---


def fresh_processes(aws: SlowAwsEmulator, env: dict[str, str], *, processes: int, progress: Progress) -> dict[str, Any]:
    """`processes` new interpreters per backend, one at a time, each doing the same 25 lookups.

    The two backends take turns (stock, sidecar, sidecar, stock, ...) so that whatever else the
    machine does weighs on both alike. AWS calls are told apart by client (boto3 or the daemon's
    aiobotocore), so the daemon's background calls, if any, are the sidecar's.
    """
    _, lookups = fresh_process_workload()
    out: dict[str, Any] = {
        "processes": processes,
        "lookups_per_process": len(lookups),
        "absent_per_process": sum(1 for _, _, expected in lookups if expected is None),
        "order": "alternating: stock, sidecar, sidecar, stock, ...",
        "wall_s_excludes_interpreter_shutdown": True,  # see child.main
    }
    aws.clear_counts()
    progress("fresh processes: starting the sidecar daemon")
    with sidecar_process(aws.endpoint) as daemon:
        warm_up = aws.snapshot("sidecar")
        specs = {
            "stock": {"mode": "fresh", "backend": "stock", "kwargs": stock_kwargs(aws), "lookups": lookups},
            "sidecar": {"mode": "fresh", "backend": "sidecar", "kwargs": daemon.backend_kwargs, "lookups": lookups},
        }
        records: dict[str, list[dict[str, Any]]] = {"stock": [], "sidecar": []}
        started = time.perf_counter()
        for index in range(processes):
            progress(f"fresh processes: {index + 1}/{processes} of each")
            for backend in ("stock", "sidecar") if index % 2 == 0 else ("sidecar", "stock"):
                records[backend].append(run_child(specs[backend], env))
        wall = time.perf_counter() - started
        stock_calls, sidecar_calls = aws.snapshot("stock"), aws.snapshot("sidecar")
    out["wall_total_s"] = wall
    out["all_calls_at_the_emulator"] = aws.snapshot()
    sidecar_during = {api: count - warm_up.get(api, 0) for api, count in sidecar_calls.items()}
    sidecar_during = {api: count for api, count in sidecar_during.items() if count}
    out["stock"] = _fresh_summary(records["stock"], stock_calls, processes)
    out["sidecar"] = _fresh_summary(records["sidecar"], sidecar_during, processes)
    out["sidecar"]["daemon_warm_up_calls"] = warm_up
    out["sidecar"]["daemon_warm_up_calls_total"] = sum(warm_up.values())
    out["sidecar"]["daemon_ready_s"] = daemon.started_in_s
    return out


def _fresh_summary(records: list[dict[str, Any]], calls: dict[str, int], processes: int) -> dict[str, Any]:
    fields = ("wall_s", "total_s", "airflow_import_s", "backend_import_s", "construct_s", "first_lookup_s", "lookups_s")
    return {
        "aws_calls": calls,
        "aws_calls_total": sum(calls.values()),
        "aws_calls_per_process": sum(calls.values()) / processes,
        "wall_total_s": sum(record["wall_s"] for record in records),
        "median": {field: median([record[field] for record in records]) for field in fields},
        "boto3_loaded_in_any": any(record["boto3_loaded"] or record["botocore_loaded"] for record in records),
        "per_process": records,
    }


# --- 3. a simulated day ---


async def _simulate_day(
    aws: SlowAwsEmulator,
    values: dict[str, str],
    *,
    seconds: int,
    step: int,
    progress: Progress,
    settings_env: dict[str, str],
) -> dict[str, Any]:
    clock = FakeClock()
    # The whole quota: pacing waits on the real clock while the day runs on the fake one, so at the
    # default share each listing and batch call would wait 100 ms for nothing; no count changes.
    settings = make_settings(aws, aws_quota_share=1, **settings_env)
    daemon = Daemon(settings, timer=clock, jitter=random.Random(200).uniform)
    await daemon.open()
    try:
        aws.clear_counts()
        await daemon.warmup.warm_up()
        warm_up = aws.snapshot("sidecar")
        aws.clear_counts()
        statuses: Counter[str] = Counter()
        reads = 0
        expected = dict(values)
        rotated: dict[str, str] = {}  # key -> its value before a rotation no listing has seen yet
        rotations = 0
        secrets = aws.client()
        next_listing = settings.list_interval
        for elapsed in range(0, seconds, step):
            if elapsed % 600 == 0 and elapsed:  # a rotation every ten minutes, through the keys in turn
                key = sorted(values)[elapsed // 600 % len(values)]
                rotated[key], expected[key] = expected[key], f"{values[key]} rotated at {elapsed}"
                secrets.put_secret_value(SecretId=VARIABLES + key, SecretString=expected[key])
                rotations += 1
            if elapsed % 60 == 0:
                for key in values:
                    value, status = await resolved(daemon.resolver, "variables", key)
                    if value != expected[key] and (key not in rotated or value != rotated[key]):
                        raise WrongValue(f"simulated day, minute {elapsed // 60}: variable {key!r} had a wrong value")
                    statuses[status.value] += 1
                    reads += 1
            if elapsed % 3600 == 0 and elapsed:
                progress(f"simulated day: hour {elapsed // 3600}/{seconds // 3600}")
            clock.advance(step)
            await daemon.cache.refresh_due()
            if elapsed + step >= next_listing:
                await daemon.warmup.list_once()
                rotated.clear()  # from here on, only the new values are right
                next_listing += settings.list_interval
        calls = aws.snapshot("sidecar")  # not the rotations, which the test makes
    finally:
        await daemon.stop()
    return {
        "settings": {
            "ttl_s": settings.ttl,
            "negative_ttl_s": settings.negative_ttl,
            "list_interval_s": settings.list_interval,
        },
        "warm_up_calls": warm_up,
        "calls": calls,
        "reads": reads,
        "rotations": rotations,
        "read_statuses": dict(sorted(statuses.items())),
    }


def calls_per_day(
    aws: SlowAwsEmulator,
    *,
    keys: int,
    hours: float,
    step: int,
    price_per_10k: float,
    progress: Progress,
    settings_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Each key read once a simulated minute, one rotated every ten; refresh passes every `step` s;
    listings every list_interval. `settings_env`: SIDECAR_* settings besides the defaults."""
    if 60 % step:
        raise ValueError(f"step must divide a minute, got {step}")
    values = day_workload(keys)
    aws.reset()
    aws.seed({VARIABLES + key: value for key, value in values.items()})
    latency, aws.latency = aws.latency, 0.0  # call counts do not depend on it; the fake clock stands still
    seconds = int(hours * 3600)
    started = time.perf_counter()
    try:
        simulated = _simulate_day(
            aws, values, seconds=seconds, step=step, progress=progress, settings_env=settings_env or {}
        )
        measured = asyncio.run(simulated)
    finally:
        aws.latency = latency
    scale = 86400 / seconds
    sidecar_day = {api: count * scale for api, count in measured["calls"].items()}
    stock_day = keys * 1440  # one GetSecretValue per lookup, per reading process
    return {
        "keys": keys,
        "simulated_hours": hours,
        "extrapolated_to_a_day": seconds != 86400,
        "step_s": step,
        "price_per_10k_calls_usd": price_per_10k,
        "wall_s": time.perf_counter() - started,
        "sidecar": {
            **measured,
            "calls_per_day": sidecar_day,
            "calls_per_day_total": sum(sidecar_day.values()),
            "usd_per_day": sum(sidecar_day.values()) / 10_000 * price_per_10k,
        },
        "stock": {
            "how": "analytic: the provider backend calls GetSecretValue once per lookup, in every process",
            "calls_per_day_per_reading_process": {"GetSecretValue": stock_day},
            "usd_per_day_per_reading_process": stock_day / 10_000 * price_per_10k,
        },
    }
