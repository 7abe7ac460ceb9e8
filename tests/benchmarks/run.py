"""The stock SecretsManagerBackend and the sidecar, side by side, against a counting AWS emulation.

    .venv/bin/python -m tests.benchmarks.run [--quick] [--latency-ms 20] [--output PATH]

1. warm lookups in one process: latency of a present and of an absent variable, for the stock
   backend, the stock backend behind Airflow's `[secrets] use_cache`, aws-secretsmanager-caching's
   in-process SecretCache, and the sidecar;
2. fresh processes, one after another, each reading 20 variables (5 absent) and 5 connections:
   AWS calls, import and lookup times;
3. AWS calls in a simulated day for 200 keys read once a minute, at the default settings (but the
   whole AWS quota share: pacing changes no count, and waits on the real clock);
S2-S5, the performance targets: a warm hit against the floors (floors.py), hits/s under wrk
(throughput.py) and instructions per hit under callgrind (instructions.py), a stampede on one
cold key and 10,000 cached secrets (capacity.py); then a KubernetesExecutor task pod's daemon with
warm-up on and off (taskpod.py).

AWS is moto in server mode with `--latency-ms` added to every request, to model a regional
round trip. Prints tables and writes every figure, with the environment, to one JSON file.
Timings never fail the run; a wrong value read does.
"""

from __future__ import annotations

import os

from tests.benchmarks.sidecar_process import aws_env

# Before boto3 or the daemon look for credentials: nothing here may reach real AWS.
os.environ.update(aws_env())

import argparse
import datetime
import json
import logging
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.benchmarks import capacity, floors, instructions, taskpod, throughput
from tests.benchmarks.emulator import SlowAwsEmulator
from tests.benchmarks.report import number, table
from tests.benchmarks.scenarios import calls_per_day, fresh_processes, warm_latency
from tests.benchmarks.sidecar_process import ROOT, sidecar_process
from tests.benchmarks.workload import fresh_process_workload

DEFAULT_OUTPUT = Path(__file__).with_name("results") / "latest.json"
PRICE_PER_10K = 0.05  # USD per 10,000 Secrets Manager API calls
APIS = ("GetSecretValue", "BatchGetSecretValue", "ListSecrets")


@dataclass(frozen=True)
class Plan:
    n_stock: int
    n_sidecar: int
    processes: int
    day_keys: int
    day_hours: float
    day_step: int
    floor_requests: int
    floor_rounds: int
    wrk_seconds: int
    wrk_rounds: int
    wrk_processes: int
    counted_requests: int
    stampede_clients: int
    cached_entries: int
    task_pods: int


FULL = Plan(
    n_stock=300,
    n_sidecar=2000,
    processes=40,
    day_keys=200,
    day_hours=24,
    day_step=10,
    floor_requests=floors.REQUESTS,
    floor_rounds=floors.ROUNDS,
    wrk_seconds=1,
    wrk_rounds=throughput.ROUNDS,
    wrk_processes=throughput.PROCESSES,
    counted_requests=1000,
    stampede_clients=500,
    cached_entries=10000,
    task_pods=3,
)
QUICK = Plan(
    n_stock=30,
    n_sidecar=200,
    processes=4,
    day_keys=200,
    day_hours=3,
    day_step=10,
    floor_requests=200,
    floor_rounds=2,
    wrk_seconds=1,
    wrk_rounds=2,
    wrk_processes=1,
    counted_requests=100,
    stampede_clients=50,
    cached_entries=500,
    task_pods=1,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds, not minutes)")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="delay added to every emulated AWS request (default 20)"
    )
    parser.add_argument("--other-python", help="S3 also measures the daemon on this Python (e.g. 3.12)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})")
    return parser.parse_args(argv)


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr with the seconds since the run began: where a slow run spent its time."""
    print(f"  ... [{time.monotonic() - _STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def environment(argv: list[str]) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    executable = Path(sys.executable)
    if executable.is_relative_to(ROOT):
        executable = executable.relative_to(ROOT)  # .venv/bin/python, as the Makefile runs it
    return {
        "command": shlex.join([str(executable), "-m", "tests.benchmarks.run", *argv]),
        "python_executable": sys.executable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()),
        "git_commit": commit,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            dist: version(dist)
            for dist in (
                "airflow-secrets-sidecar",
                "apache-airflow",
                "apache-airflow-providers-amazon",
                "boto3",
                "botocore",
                "aiobotocore",
                "aiohttp",
                "moto",
                "aws-secretsmanager-caching",
            )
        },
    }


def child_env(airflow_home: str) -> dict[str, str]:
    """The environment of every Airflow-like child: fake AWS credentials, a throwaway AIRFLOW_HOME."""
    env = aws_env()
    env["AIRFLOW_HOME"] = airflow_home
    for name in list(env):
        if name.startswith(("AIRFLOW__SECRETS__", "SIDECAR_")):
            del env[name]  # the children build their backend from explicit kwargs only
    return env


# --- tables ---


def us(value: float) -> str:
    return number(value, 0 if value >= 100 else 1)


def ms(seconds: float) -> str:
    return number(seconds * 1000, 0 if seconds >= 0.1 else 1)


def calls_cells(calls: dict[str, float], apis: list[str]) -> list[Any]:
    return [calls.get(api, 0) for api in apis]


def all_apis(*counters: dict[str, Any]) -> list[str]:
    seen = {api for counter in counters for api in counter}
    return [api for api in APIS if api in seen] + sorted(seen - set(APIS))


CONTENDERS = {
    "stock": "stock backend",
    "stock_use_cache": "stock + Airflow [secrets] use_cache",
    "aws_caching": "aws-secretsmanager-caching (in-process)",
    "sidecar_round_trip": "sidecar, local_ttl 0 (the round trip to the daemon)",
    "sidecar": "sidecar (local_ttl at its default)",
}
PEERS = ("stock_use_cache", "aws_caching")  # the caches a user could pick instead
WARM_TARGET = 0.5  # the sidecar's warm p50 over the fastest peer's, present and absent key


def warm_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per key case: the sidecar's p50 over the fastest peer's in the same run, and that peer."""
    out = {}
    for case in ("existing", "missing"):
        peer = min(PEERS, key=lambda name: results[name][case]["p50_us"])
        ratio = results["sidecar"][case]["p50_us"] / results[peer][case]["p50_us"]
        out[case] = {"fastest_peer": peer, "over_fastest_peer": ratio, "met": ratio <= WARM_TARGET}
    return out


def warm_table(run: dict[str, Any]) -> str:
    results = run["results"]
    rows = []
    for case, label in (("existing", "present key"), ("missing", "absent key")):
        for backend, name in CONTENDERS.items():
            figures = results[backend][case]
            rows.append(
                [
                    f"{name}, {label}",
                    figures["n"],
                    us(figures["p50_us"]),
                    us(figures["p90_us"]),
                    us(figures["p99_us"]),
                    us(figures["mean_us"]),
                ]
            )
    notes = [
        f"{name}: {sum(results[backend]['aws_calls'].values()):,} AWS calls for {results[backend]['lookups']:,} "
        f"lookups (warm-up lookups included): {results[backend]['aws_calls_per_lookup']:.2f} per lookup"
        for backend, name in CONTENDERS.items()
    ]
    stock, sidecar = results["stock"], results["sidecar"]
    targets = run["targets"]
    for case, label in (("existing", "present"), ("missing", "absent")):
        ratio = stock[case]["p50_us"] / sidecar[case]["p50_us"]
        notes.append(f"p50, {label} key: the sidecar answers {ratio:,.0f}x faster than the stock backend")
        target = targets[case]
        notes.append(
            f"p50, {label} key: sidecar / fastest peer ({CONTENDERS[target['fastest_peer']]}) = "
            f"{target['over_fastest_peer']:.2f}, target <= {WARM_TARGET:g}: {'met' if target['met'] else 'missed'}"
        )
    notes += [
        "use_cache keeps found values only, in a multiprocessing manager's dict: an absent key calls AWS every time;",
        "aws-secretsmanager-caching lives inside each process: every fresh process asks AWS again (boto3 and all).",
    ]
    return table(
        f"1. Warm get_variable in one process (microseconds), emulated AWS latency {run['latency_ms']:g} ms",
        ["backend, key", "n", "p50", "p90", "p99", "mean"],
        rows,
        notes,
    )


def fresh_tables(result: dict[str, Any]) -> str:
    stock, sidecar = result["stock"], result["sidecar"]
    processes = result["processes"]
    apis = all_apis(stock["aws_calls"], sidecar["aws_calls"], sidecar["daemon_warm_up_calls"])
    rows = [
        [
            "stock: the processes",
            *calls_cells(stock["aws_calls"], apis),
            stock["aws_calls_total"],
            number(stock["aws_calls_per_process"], 1),
        ],
        [
            "sidecar: daemon warm-up (once)",
            *calls_cells(sidecar["daemon_warm_up_calls"], apis),
            sidecar["daemon_warm_up_calls_total"],
            "-",
        ],
        [
            "sidecar: the processes",
            *calls_cells(sidecar["aws_calls"], apis),
            sidecar["aws_calls_total"],
            number(sidecar["aws_calls_per_process"], 1),
        ],
    ]
    sidecar_all = sidecar["aws_calls_total"] + sidecar["daemon_warm_up_calls_total"]
    title = (
        f"2a. AWS calls: {processes} fresh processes, each {result['lookups_per_process']} lookups "
        f"(20 variables of which {result['absent_per_process']} absent, 5 connections)"
    )
    calls = table(
        title,
        ["", *apis, "total", "per process"],
        rows,
        [f"sidecar, warm-up included: {sidecar_all:,} calls against {stock['aws_calls_total']:,} for stock"],
    )
    rows = []
    for backend, figures in (("stock", stock), ("sidecar", sidecar)):
        middle = figures["median"]
        rows.append(
            [
                backend,
                number(figures["wall_total_s"], 1),
                ms(middle["wall_s"]),
                ms(middle["airflow_import_s"]),
                ms(middle["backend_import_s"]),
                ms(middle["first_lookup_s"]),
                ms(middle["lookups_s"]),
                "yes" if figures["boto3_loaded_in_any"] else "no",
            ]
        )
    timings = table(
        f"2b. Time: {processes} fresh processes per backend, one at a time, taking turns (medians, ms)",
        ["backend", "sum, s", "process", "import airflow", "import backend", "1st lookup", "25 lookups", "boto3"],
        rows,
        [
            "sum: all of that backend's process times; process: spawn to exit as the parent sees it",
            "  (the child skips interpreter shutdown: ~0.35 s with Airflow loaded, for either backend);",
            "import backend: the backend module, on top of airflow;",
            "1st lookup: for stock this includes importing boto3 and building its client;",
            "boto3: whether boto3/botocore was loaded in the Airflow process at all;",
            f"the sidecar daemon itself took {sidecar['daemon_ready_s']:.2f} s from spawn to ready (once).",
        ],
    )
    return f"{calls}\n\n{timings}"


def day_table(result: dict[str, Any]) -> str:
    sidecar, stock = result["sidecar"], result["stock"]
    price = result["price_per_10k_calls_usd"]
    stock_calls = stock["calls_per_day_per_reading_process"]
    apis = all_apis(sidecar["calls_per_day"], sidecar["warm_up_calls"], stock_calls)

    def cost(total: float) -> list[str]:
        return [number(total / 10_000 * price, 2), number(total / 10_000 * price * 30, 2)]

    rows = []
    for readers in (1, 10):
        per_day = {api: count * readers for api, count in stock_calls.items()}
        total = sum(per_day.values())
        label = "1 process" if readers == 1 else f"{readers} processes"
        rows.append([f"stock, {label} reading (analytic)", *calls_cells(per_day, apis), total, *cost(total)])
    measured = "measured" if not result["extrapolated_to_a_day"] else f"{result['simulated_hours']:g} h x24"
    total = sidecar["calls_per_day_total"]
    rows.append(
        [
            f"sidecar, any number of processes ({measured})",
            *calls_cells(sidecar["calls_per_day"], apis),
            total,
            *cost(total),
        ]
    )
    warm = sum(sidecar["warm_up_calls"].values())
    rows.append(["sidecar daemon warm-up (per start)", *calls_cells(sidecar["warm_up_calls"], apis), warm, *cost(warm)])
    settings = sidecar["settings"]
    statuses = ", ".join(f"{count:,} {status}" for status, count in sidecar["read_statuses"].items())
    return table(
        f"3. AWS calls per day, {result['keys']} keys each read once a minute "
        f"(ttl {settings['ttl_s']:g} s, negative_ttl {settings['negative_ttl_s']:g} s, "
        f"list_interval {settings['list_interval_s']:g} s)",
        ["", *apis, "calls/day", "$/day", "$/30 days"],
        rows,
        [
            f"stock (analytic): {result['keys']} keys x 1,440 minutes = {result['keys'] * 1440:,} GetSecretValue "
            "per reading process per day,",
            "  one call per lookup, nothing cached: it grows with every process that reads.",
            f"sidecar (measured): {sidecar['reads']:,} reads over the simulated {result['simulated_hours']:g} h "
            f"({statuses});",
            "  one daemon serves every process on the host, so its count does not grow with them.",
            f"price: ${price:g} per 10,000 API calls. The simulation took {result['wall_s']:.1f} s of real time.",
        ],
    )


def markdown_summary(report: dict[str, Any]) -> str:
    """The targets of issue 11 and the contenders, as the README shows them."""
    env = report["environment"]
    s2, s3 = report["s2_floors"], report["s3_throughput"]
    s4, s5 = report["s4_s5_capacity"]["s4"], report["s4_s5_capacity"]["s5"]
    passes = report["s4_s5_capacity"]["refresh_pass"]
    lines = [
        f"`{env['command']}` on {env['cpu_count']} CPUs, Python {env['python']}, {env['started_at']}:",
        "",
        "| target | measured | goal | |",
        "|---|---:|---:|---|",
    ]

    def row(name: str, measured: str, goal: str, met: bool | None) -> None:
        lines.append(f"| {name} | {measured} | {goal} | {'met' if met else 'missed' if met is False else '-'} |")

    backends = ("our backend -> daemon (TCP)", "our backend -> daemon (Unix socket)")
    for path in backends:
        figures = s2["contenders"][path]
        ok = figures["p50_over_floor"] <= floors.TARGET_P50
        row(f"S2 {path[len('our backend -> ') :]}: p50 / naive floor", f"{figures['p50_over_floor']:.2f}", "<= 0.8", ok)
        tail_ok = figures["p99_over_p50"] <= floors.TARGET_TAIL
        row(f"S2 {path[len('our backend -> ') :]}: p99 / own p50", f"{figures['p99_over_p50']:.2f}", "<= 2", tail_ok)
    floor_tail = s2["contenders"]["http.client -> trivial aiohttp handler (naive floor)"]["p99_over_p50"]
    row("S2 the naive floor's own p99 / p50", f"{floor_tail:.2f}", "", None)
    every_turn = " / ".join(f"{s2['contenders'][path]['every_turn_p99_over_p50']:.2f}" for path in backends)
    row("S2 p99 / own p50 over every turn, steal included (TCP / Unix)", every_turn, "", None)
    row("S2 turns measured again: " + floors.steal_note(s2["steal"]), str(s2["steal"]["measured_again"]), "", None)
    if "skipped" in s3:
        row("S3 hits/s, daemon / trivial aiohttp", "skipped: " + s3["skipped"], ">= 0.8", None)
    else:
        row("S3 hits/s, daemon / trivial aiohttp", f"{s3['daemon_over_trivial']:.2f}", ">= 0.8", s3["s3_target_met"])
        for name, ratio in s3["over_trivial"].items():
            if name.startswith("daemon ") and name != throughput.DAEMON:
                row(f"S3 hits/s, {name} / trivial aiohttp", f"{ratio:.2f}", "", None)
    counted = report["s3_instructions"]
    if "skipped" in counted:
        row("S3 counted: instructions per hit, trivial / daemon", "skipped: " + counted["skipped"], "", None)
    else:
        per_hit = counted["instructions_per_request"]
        row(
            f"S3 counted: instructions per hit, trivial / daemon ({per_hit[instructions.TRIVIAL]:,.0f} / "
            f"{per_hit[instructions.DAEMON]:,.0f})",
            f"{counted['trivial_over_daemon']:.3f}",
            "",
            None,
        )
    row(f"S4 AWS calls, {s4['clients']} concurrent cold requests", str(sum(s4["aws_calls"].values())), "1", True)
    row(
        "S5 RSS, nothing cached",
        f"{s5['rss_mb_empty']:.1f} MB",
        f"<= {capacity.RSS_IDLE_TARGET_MB:g} MB",
        s5["s5_idle_target_met"],
    )
    row(
        f"S5 RSS, {s5['entries']:,} cached 1 KB secrets",
        f"{s5['rss_mb_full']:.1f} MB",
        f"<= {capacity.RSS_TARGET_MB:g} MB",
        s5["s5_rss_target_met"],
    )
    largest = max(passes, key=int)
    row(
        f"S5 refresh pass, nothing due, {int(largest):,} entries",
        f"{passes[largest]['p50_us']:.1f} us",
        "flat",
        None,
    )
    warm = report["warm_latency"][0]
    for case, label in (("existing", "present"), ("missing", "absent")):
        target = warm["targets"][case]
        row(
            f"warm get_variable p50, {label} key: sidecar / fastest peer ({target['fastest_peer']})",
            f"{target['over_fastest_peer']:.2f}",
            f"<= {WARM_TARGET:g}",
            target["met"],
        )
    lines += ["", "| warm get_variable, present key | p50 us | AWS calls per lookup |", "|---|---:|---:|"]
    for backend, name in CONTENDERS.items():
        figures = warm["results"][backend]
        lines.append(f"| {name} | {us(figures['existing']['p50_us'])} | {figures['aws_calls_per_lookup']:.2f} |")
    return "\n".join(lines)


def floors_alone(requests: int, rounds: int) -> dict[str, Any]:
    """S2 in a process of its own: its clients time each request in their process, which here
    holds what the sections before left (Airflow's modules, emulator and manager threads)."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "s2.json"
        command = [sys.executable, "-m", "tests.benchmarks.floors", "--requests", str(requests)]
        command += ["--rounds", str(rounds), "--output", str(output)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:  # a wrong value read fails the run, as in this process
            raise RuntimeError(f"S2 failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
        return json.loads(output.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator would log every request
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parse_args(raw_argv)
    plan = QUICK if args.quick else FULL
    started, stolen_at_start = time.perf_counter(), floors.stolen_ms()
    report: dict[str, Any] = {
        "environment": environment(raw_argv),
        "settings": {"quick": args.quick, "latency_ms": args.latency_ms, "plan": plan.__dict__},
    }
    env_info = report["environment"]
    versions = env_info["versions"]
    print(
        f"airflow {versions['apache-airflow']} (amazon provider {versions['apache-airflow-providers-amazon']}), "
        f"boto3 {versions['boto3']}, python {env_info['python']}, {env_info['cpu_count']} CPUs, "
        f"load average {env_info['load_average_at_start'][0]:.2f} at start\n",
        flush=True,
    )
    latencies = [args.latency_ms] + ([0.0] if args.latency_ms != 0 else [])
    aws = SlowAwsEmulator(latency=args.latency_ms / 1000)
    aws.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-airflow-home-") as airflow_home:
            env = child_env(airflow_home)
            secrets, _ = fresh_process_workload()
            aws.seed(secrets)

            report["warm_latency"] = []
            with sidecar_process(aws.endpoint) as daemon:
                for latency_ms in latencies:
                    progress(f"warm lookups, emulated latency {latency_ms:g} ms")
                    aws.latency = latency_ms / 1000
                    results = warm_latency(
                        aws, daemon.backend_kwargs, env, n_stock=plan.n_stock, n_sidecar=plan.n_sidecar
                    )
                    run = {"latency_ms": latency_ms, "results": results, "targets": warm_targets(results)}
                    report["warm_latency"].append(run)
                    print(warm_table(run) + "\n", flush=True)
            aws.latency = args.latency_ms / 1000

            progress("fresh processes")
            report["fresh_processes"] = fresh_processes(aws, env, processes=plan.processes, progress=progress)
            print(fresh_tables(report["fresh_processes"]) + "\n", flush=True)

        progress("simulated day")
        report["calls_per_day"] = calls_per_day(
            aws,
            keys=plan.day_keys,
            hours=plan.day_hours,
            step=plan.day_step,
            price_per_10k=PRICE_PER_10K,
            progress=progress,
        )
        print(day_table(report["calls_per_day"]) + "\n", flush=True)
    finally:
        aws.stop()

    progress("S2: a warm hit against the floors")
    report["s2_floors"] = floors_alone(plan.floor_requests, plan.floor_rounds)
    print(floors.render(report["s2_floors"]) + "\n", flush=True)
    progress("S3: hits/s under wrk")
    report["s3_throughput"] = throughput.run(plan.wrk_seconds, plan.wrk_rounds, args.other_python, plan.wrk_processes)
    print(throughput.render(report["s3_throughput"]) + "\n", flush=True)
    progress("S3 counted: instructions per hit under callgrind")
    report["s3_instructions"] = instructions.run(plan.counted_requests)
    print(instructions.render(report["s3_instructions"]) + "\n", flush=True)
    progress("S4 and S5: a stampede on one cold key, and the cost of cached secrets")
    report["s4_s5_capacity"] = capacity.run(plan.stampede_clients, plan.cached_entries)
    print(capacity.render(report["s4_s5_capacity"]) + "\n", flush=True)
    progress("a KubernetesExecutor task pod, warm-up on and off")
    report["task_pod"] = taskpod.run(rounds=plan.task_pods)
    print(taskpod.render(report["task_pod"]) + "\n", flush=True)

    summary = markdown_summary(report)
    print(summary)
    report["wall_s"] = time.perf_counter() - started
    report["environment"]["load_average_at_end"] = list(os.getloadavg())
    report["environment"]["stolen_ms"] = floors.stolen_ms() - stolen_at_start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(summary + "\n", encoding="utf-8")
    print(
        f"whole run: {report['wall_s']:.0f} s (load average {os.getloadavg()[0]:.2f} at the end, "
        f"{report['environment']['stolen_ms'] / 1000:.1f} s of CPU taken by the hypervisor); "
        f"figures and environment written to {args.output}, the summary to {args.output.with_suffix('.md')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
