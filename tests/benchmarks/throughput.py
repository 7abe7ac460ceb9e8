"""S3: cache hits per second of one daemon under wrk, beside a trivial aiohttp handler and nginx.

    .venv/bin/python -m tests.benchmarks.throughput [--seconds 1] [--rounds 8] [--processes 3] [--other-python PATH]

`wrk -t1 -c32` (Debian's wrk) asks each server for the same cached variable, with the token
header, in interleaved rounds. Each Python server runs as several processes (PROCESSES), each
measured once a round: two processes of the same server differ by 5-30% in hits/s here (hash
seed, memory layout), which one process per server turned into a ratio that moved 0.1 between runs.
A server's rate in a round is the mean of its processes'; a ratio is the median of each round's
ratio to the trivial handler: they run seconds apart, so a shared machine's drift hits both alike.
A server that answers anything but 2xx fails the run; the figures are reported, never judged.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import urllib.request
from typing import Any

from tests.benchmarks.floors import KEY, VALUE, WrongValue, aws_holding_the_probe, nginx, trivial_aiohttp
from tests.benchmarks.report import emit, section_parser, table, turn
from tests.benchmarks.sidecar_process import sidecar_process
from tests.support import TOKEN

TARGET = 0.8  # of the trivial aiohttp handler's hits/s
PROCESSES, ROUNDS = 3, 8  # processes per Python server; rounds, each measuring every process once
DAEMON = "daemon, cached variable"
UVLOOP = "daemon on uvloop (SIDECAR_EVENT_LOOP)"
TRIVIAL = "trivial aiohttp handler"
NGINX = "nginx constant"


def wrk(url: str, seconds: int, connections: int = 32) -> float:
    """Requests per second; raises when any answer was not 2xx or a socket failed."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-H", f"X-Sidecar-Token: {TOKEN}", url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise WrongValue(f"wrk against {url} saw failures:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(found.group(1))


def check(url: str) -> None:
    """One GET through urllib: the server answers the value every contender must answer."""
    request = urllib.request.Request(url, headers={"X-Sidecar-Token": TOKEN})
    with urllib.request.urlopen(request, timeout=10) as response:
        if json.loads(response.read())["value"] != VALUE:
            raise WrongValue(f"{url} answered a wrong value")


def run(
    seconds: int = 1, rounds: int = ROUNDS, other_python: str | None = None, processes: int = PROCESSES
) -> dict[str, Any]:
    """`other_python`: an interpreter with the daemon installed, measured as one more row;
    `processes`: processes per Python server."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (apt-get install wrk): no S3 in this run"}
    notes = []
    with aws_holding_the_probe() as aws, contextlib.ExitStack() as stack:

        def daemons(python: str = sys.executable, **settings: str) -> list[str]:
            started = [stack.enter_context(sidecar_process(aws.endpoint, python, **settings)) for _ in range(processes)]
            return [f"{daemon.url}/v1/variables/{KEY}" for daemon in started]

        urls = {DAEMON: daemons(), UVLOOP: daemons(event_loop="uvloop")}
        if other_python:
            version = subprocess.run(
                [other_python, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
            urls[f"daemon, Python {version}"] = daemons(other_python)
        ports = [stack.enter_context(trivial_aiohttp()) for _ in range(processes)]
        urls[TRIVIAL] = [f"http://127.0.0.1:{port}/v1/variables/{KEY}" for port in ports]
        nginx_port = stack.enter_context(nginx())
        if nginx_port is None:
            notes.append("nginx not installed (apt-get install nginx-light): no nginx in this run")
        else:
            urls[NGINX] = [f"http://127.0.0.1:{nginx_port}/v1/variables/{KEY}"]  # one C process: no seed to vary
        for url in itertools.chain(*urls.values()):
            check(url)
        order = [(name, url) for name, server_urls in urls.items() for url in server_urls]
        measured: dict[str, list[list[float]]] = {name: [] for name in urls}  # per round, each process's rate
        for round_ in range(rounds):
            for name in measured:
                measured[name].append([])
            for name, url in turn(order, round_):
                measured[name][-1].append(wrk(url, seconds))
        check(urls[DAEMON][0])
    rates = {name: [statistics.mean(values) for values in per_round] for name, per_round in measured.items()}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {
        name: statistics.median(d / t for d, t in zip(rates[name], rates[TRIVIAL], strict=True)) for name in rates
    }
    ratio = ratios[DAEMON]
    return {
        "seconds": seconds,
        "rounds": rounds,
        "processes": {name: len(per_round[0]) for name, per_round in measured.items()},
        "connections": 32,
        "requests_per_s": rates,
        "requests_per_s_by_process": measured,
        "median_requests_per_s": medians,
        "daemon_over_trivial": ratio,
        "over_trivial": ratios,
        "s3_target_met": ratio >= TARGET,
        "notes": notes,
    }


def render(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"S3: skipped: {result['skipped']}"
    rows = []
    for name, rate in result["median_requests_per_s"].items():
        per_process = [
            statistics.median(rates) for rates in zip(*result["requests_per_s_by_process"][name], strict=True)
        ]
        rows.append(
            [
                name,
                str(len(per_process)),
                f"{rate:,.0f}",
                f"{min(result['requests_per_s'][name]):,.0f}",
                f"{max(result['requests_per_s'][name]):,.0f}",
                f"{max(per_process) / min(per_process):.2f}",
                f"{result['over_trivial'][name]:.2f}",
            ]
        )
    verdict = "met" if result["s3_target_met"] else "MISSED"
    return table(
        f"S3: hits/s under wrk -t1 -c{result['connections']}, {result['rounds']} interleaved rounds "
        f"of {result['seconds']:g} s per process; a server's round: the mean of its processes'",
        [
            "server",
            "processes",
            "median req/s",
            "slowest round",
            "fastest round",
            "fastest / slowest process",
            "/ trivial (median of rounds)",
        ],
        rows,
        [
            f"S3 target: the daemon (asyncio, like the trivial handler) >= {TARGET}x the trivial handler, "
            f"the median of each round's ratio: {result['daemon_over_trivial']:.2f}, {verdict}",
            *result["notes"],
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = section_parser("throughput", __doc__)
    parser.add_argument("--seconds", type=int, default=1, help="whole seconds per round (wrk takes no fraction)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--processes", type=int, default=PROCESSES, help="processes per Python server")
    parser.add_argument("--other-python", help="a Python with the daemon installed (e.g. 3.12): one more row")
    args = parser.parse_args(argv)
    return emit(run(args.seconds, args.rounds, args.other_python, args.processes), render, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
