"""How many calls a daemon sends to an AWS that throttles, with botocore's standard and adaptive
retry modes: `python -m tests.benchmarks.throttling [--seconds 20] [--keys 20]`.

Each mode gets a fresh daemon (real clock) in front of moto behind the fault layer. Clients ask
for `--keys` cold keys and `--keys` cached ones (expired, so stale answers are possible) every
0.1 s while every API throttles for `--seconds`, then AWS recovers. Printed: calls that reached
AWS during the outage, answers by status, and how long after recovery every key answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

import aiohttp

from sidecar.daemon.lifecycle import Daemon
from sidecar.daemon.sources import aws as aws_module
from tests.faults import FaultProxy
from tests.support import FAKE_AWS_ENV, TOKEN, AwsEmulator, make_settings


async def _run(mode: str, emulator: AwsEmulator, seconds: float, keys: int) -> dict[str, Any]:
    aws_module.RETRY_MODE = mode
    with FaultProxy(emulator.endpoint) as proxy:
        settings = make_settings(
            emulator, {"endpoint_url": proxy.endpoint}, warmup="false", ttl=1, negative_ttl=1, request_timeout=3
        )
        daemon = Daemon(settings)
        await daemon.open()
        names = [f"cached{i}" for i in range(keys)]
        cold = [f"cold{i}" for i in range(keys)]
        statuses: Counter[str] = Counter()
        latency: dict[str, list[float]] = {"cached": [], "cold": []}
        try:
            async with aiohttp.ClientSession(headers={"X-Sidecar-Token": TOKEN}) as http:

                async def ask(key: str) -> int:
                    started = time.perf_counter()
                    async with http.get(f"{daemon.url}/v1/variables/{key}") as response:
                        await response.read()
                    latency["cached" if key.startswith("cached") else "cold"].append(time.perf_counter() - started)
                    return response.status

                for key in names:
                    assert await ask(key) == 200
                await asyncio.sleep(1.1)  # every cached answer expires: only stale ones remain
                proxy.set("*", "throttle")
                proxy.reset_counts()
                for samples in latency.values():
                    samples.clear()
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    answers = await asyncio.gather(*(ask(key) for key in names + cold))
                    statuses.update(f"{'cached' if i < keys else 'cold'} {s}" for i, s in enumerate(answers))
                    await asyncio.sleep(0.1)
                during = proxy.counts()
                percentiles = {kind: _p50_p99(samples) for kind, samples in latency.items()}
                proxy.clear()
                recovered = time.monotonic()
                while True:
                    answers = await asyncio.gather(*(ask(key) for key in names))
                    if set(answers) == {200}:
                        break
                    await asyncio.sleep(0.1)
                recovery = time.monotonic() - recovered
        finally:
            await daemon.stop()
    return {
        "mode": mode,
        "calls_during_outage": sum(during.values()),
        "calls_per_second": round(sum(during.values()) / seconds, 1),
        "answers": dict(sorted(statuses.items())),
        "latency_ms_p50_p99": percentiles,
        "recovery_seconds": round(recovery, 2),
    }


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return tuple(round(1000 * ordered[int(q * (len(ordered) - 1))], 1) for q in (0.5, 0.99))  # type: ignore[return-value]


async def main(seconds: float, keys: int) -> list[dict[str, Any]]:
    os.environ.update(FAKE_AWS_ENV)
    emulator = AwsEmulator()
    emulator.start()
    try:
        for i in range(keys):
            emulator.put(f"airflow/variables/cached{i}", f"v{i}")
            emulator.put(f"airflow/variables/cold{i}", f"c{i}")
        return [await _run(mode, emulator, seconds, keys) for mode in ("standard", "adaptive")]
    finally:
        emulator.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--keys", type=int, default=20)
    options = parser.parse_args()
    results = asyncio.run(main(options.seconds, options.keys))
    print("| retry mode | AWS calls during the outage | calls/s | answers (key kind, status: count) "
          "| cached p50 / p99 ms | cold p50 / p99 ms | recovery |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for row in results:
        answers = ", ".join(f"{k}: {v}" for k, v in row["answers"].items())
        cached, cold = row["latency_ms_p50_p99"]["cached"], row["latency_ms_p50_p99"]["cold"]
        print(
            f"| {row['mode']} | {row['calls_during_outage']} | {row['calls_per_second']} | {answers} "
            f"| {cached[0]} / {cached[1]} | {cold[0]} / {cold[1]} | {row['recovery_seconds']} s |"
        )
    print(json.dumps(results))
