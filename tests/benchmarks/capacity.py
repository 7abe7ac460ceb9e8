"""S4 and S5: one cold key under a stampede, and what 10,000 cached secrets cost.

    .venv/bin/python -m tests.benchmarks.capacity [--clients 500] [--entries 10000]

S4: `--clients` connections to a daemon with warm-up off each ask at once for one key it has
never seen, against AWS 50 ms away: every answer must be the value and AWS must see exactly one
GetSecretValue (single-flight), or the run fails.
S5: the daemon's resident memory once its warm-up has cached `--entries` secrets of 1 KB, beside
the same daemon with nothing to cache; and the refresh-ahead scheduler's pass, timed in process
with an injected clock, at 100 to `--entries` read entries of which none is due.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.benchmarks.emulator import SlowAwsEmulator
from tests.benchmarks.floors import WrongValue
from tests.benchmarks.report import emit, section_parser, summarize_us, table
from tests.benchmarks.sidecar_process import SidecarProcess, aws_env, sidecar_process
from tests.support import TOKEN, FakeClock

COLD_KEY = "stampede_target"
COLD_VALUE = "the cold value"
RSS_TARGET_MB = 65.0  # with --entries cached: every pod and task pod carries a daemon
RSS_IDLE_TARGET_MB = 50.0  # with nothing cached
SECRET_BYTES = 1024


# --- S4 ---


async def _stampede(port: int, clients: int) -> list[float]:
    """Open every connection first, then send every request at once; seconds to each answer."""
    request = f"GET /v1/variables/{COLD_KEY} HTTP/1.1\r\nHost: localhost\r\nX-Sidecar-Token: {TOKEN}\r\n\r\n".encode()
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    started = time.perf_counter()

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        body = await reader.readexactly(length)
        took = time.perf_counter() - started
        writer.close()
        if status != b"200" or json.loads(body)["value"] != COLD_VALUE:
            raise WrongValue(f"a stampede request got {status.decode()} or a wrong value")
        return took

    try:
        return await asyncio.wait_for(asyncio.gather(*(ask(*stream) for stream in streams)), 60)
    finally:
        for _, writer in streams:
            writer.close()


def stampede(clients: int = 500) -> dict[str, Any]:
    aws = SlowAwsEmulator(latency=0.05)
    aws.start()
    aws.reset()  # moto's store is per process: nothing left from another section
    try:
        aws.put(f"airflow/variables/{COLD_KEY}", COLD_VALUE)
        with sidecar_process(aws.endpoint, warmup="false", max_requests=str(clients + 12)) as daemon:
            aws.clear_counts()
            answered = asyncio.run(_stampede(daemon.port, clients))
            calls = aws.snapshot("sidecar")
    finally:
        aws.stop()
    if calls != {"GetSecretValue": 1}:
        raise WrongValue(f"S4: {clients} concurrent requests for one cold key made AWS calls {calls}, not 1")
    return {
        "clients": clients,
        "aws_latency_ms": 50,
        "aws_calls": calls,
        "all_answered_s": max(answered),
        "answer_ms": {name: value / 1000 for name, value in summarize_us([s * 1e6 for s in answered]).items()},
    }


# --- S5: memory ---


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc")


def _entries(daemon: SidecarProcess) -> int:
    with urllib.request.urlopen(f"{daemon.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(float(re.search(r"^sidecar_cache_entries (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]


def _read(daemon: SidecarProcess, key: str) -> str:
    request = urllib.request.Request(f"{daemon.url}/v1/variables/{key}", headers={"X-Sidecar-Token": TOKEN})
    with urllib.request.urlopen(request, timeout=10) as response:
        value: str = json.loads(response.read())["value"]
        return value


def memory(entries: int = 10000) -> dict[str, Any]:
    secrets = {f"airflow/variables/mem_{i:05d}": f"{i:05d}".ljust(SECRET_BYTES, "x") for i in range(entries)}
    aws = SlowAwsEmulator()
    aws.start()
    aws.reset()
    try:
        with sidecar_process(aws.endpoint) as empty:
            empty_mb = _rss_mb(empty.pid)
        started = time.perf_counter()
        aws.seed(secrets)
        seeded_s = time.perf_counter() - started
        with sidecar_process(aws.endpoint, max_entries=str(entries)) as daemon:
            cached = _entries(daemon)
            full_mb = _rss_mb(daemon.pid)
            for i in range(0, entries, max(1, entries // 50)):  # spot checks: the values are the ones stored
                if _read(daemon, f"mem_{i:05d}") != secrets[f"airflow/variables/mem_{i:05d}"]:
                    raise WrongValue(f"S5: variable mem_{i:05d} came back wrong")
            warm_up = aws.snapshot("sidecar")
    finally:
        aws.stop()
    if cached < entries:
        raise WrongValue(f"S5: the daemon cached {cached} entries after its warm-up, not {entries}")
    return {
        "entries": entries,
        "secret_bytes": SECRET_BYTES,
        "rss_mb_empty": empty_mb,
        "rss_mb_full": full_mb,
        "per_entry_bytes": (full_mb - empty_mb) * 1024 * 1024 / entries,
        "warm_up_calls": warm_up,
        "seeding_s": seeded_s,
        "s5_rss_target_met": full_mb <= RSS_TARGET_MB,
        "s5_idle_target_met": empty_mb <= RSS_IDLE_TARGET_MB,
    }


# --- S5: the refresh scheduler's pass ---


async def _pass_times(size: int, passes: int = 200) -> dict[str, float]:
    from sidecar.daemon.cache.cache import Cache
    from sidecar.daemon.metrics import Metrics

    async def fetch(key: str) -> str:
        return "v"

    async def fetch_many(keys: list[str]) -> dict[str, str | None]:
        return dict.fromkeys(keys, "v")

    clock = FakeClock()
    ttl = 300.0
    cache = Cache(
        fetch,
        fetch_many=fetch_many,
        ttl=ttl,
        negative_ttl=60,
        max_stale=3600,
        max_entries=size,
        metrics=Metrics(),
        timer=clock,
        jitter=lambda low, high: 0.8,
    )
    for start in range(0, size, 1000):  # fetched in batches, then read once: all queued for refresh
        cache.fill()({f"k{i}": "v" for i in range(start, min(size, start + 1000))})
        clock.advance(ttl * 0.5 / (size / 1000))  # spread over half the TTL: due times apart
    for i in range(size):
        await cache.get(f"k{i}")
    samples = []
    for _ in range(passes):
        started = time.perf_counter()
        asked = await cache.refresh_due()
        samples.append((time.perf_counter() - started) * 1e6)
        if asked:
            raise WrongValue(f"a refresh pass with nothing due refreshed {asked} entries")
    return {"p50_us": statistics.median(samples), "max_us": max(samples)}


def refresh_pass(sizes: tuple[int, ...] = (100, 1000, 10000)) -> dict[str, Any]:
    return {str(size): asyncio.run(_pass_times(size)) for size in sizes}


# --- report ---


def run(clients: int = 500, entries: int = 10000) -> dict[str, Any]:
    import os

    os.environ.update(aws_env())
    sizes = tuple(sorted({100, 1000, entries}))
    return {"s4": stampede(clients), "s5": memory(entries), "refresh_pass": refresh_pass(sizes)}


def render(result: dict[str, Any]) -> str:
    s4, s5, passes = result["s4"], result["s5"], result["refresh_pass"]
    s4_table = table(
        f"S4: {s4['clients']} concurrent requests for one cold key, AWS {s4['aws_latency_ms']} ms away",
        ["AWS calls", "all answered, ms", "answer p50, ms", "answer p99, ms"],
        [
            [
                str(s4["aws_calls"]),
                f"{s4['all_answered_s'] * 1000:.0f}",
                f"{s4['answer_ms']['p50_us']:.0f}",
                f"{s4['answer_ms']['p99_us']:.0f}",
            ]
        ],
        ["S4 target: exactly 1 AWS call (single-flight): met (anything else fails the run)"],
    )
    verdict = "met" if s5["s5_rss_target_met"] else "MISSED"
    idle_verdict = "met" if s5.get("s5_idle_target_met") else "MISSED"
    s5_table = table(
        f"S5: resident memory with {s5['entries']:,} cached {s5['secret_bytes']}-byte secrets",
        ["daemon", "RSS, MB"],
        [["nothing cached", f"{s5['rss_mb_empty']:.1f}"], [f"{s5['entries']:,} cached", f"{s5['rss_mb_full']:.1f}"]],
        [
            f"{s5['per_entry_bytes']:,.0f} bytes per entry; S5 targets: <= {RSS_IDLE_TARGET_MB:g} MB with nothing "
            f"cached: {idle_verdict}; <= {RSS_TARGET_MB:g} MB with {s5['entries']:,}: {verdict}",
            f"warm-up calls: {s5['warm_up_calls']}",
        ],
    )
    pass_table = table(
        "S5: one refresh-ahead pass with nothing due (microseconds, 200 passes)",
        ["read entries", "p50", "max"],
        [[f"{int(size):,}", f"{p['p50_us']:.1f}", f"{p['max_us']:.1f}"] for size, p in passes.items()],
        ["a due-time heap: a pass looks at the entries that are due, not at every entry"],
    )
    return f"{s4_table}\n\n{s5_table}\n\n{pass_table}"


def main(argv: list[str] | None = None) -> int:
    parser = section_parser("capacity", __doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--entries", type=int, default=10000)
    args = parser.parse_args(argv)
    return emit(run(args.clients, args.entries), render, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
