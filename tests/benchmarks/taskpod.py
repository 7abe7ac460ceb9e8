"""A KubernetesExecutor task pod: the daemon starts cold beside one task that reads 3 secrets.

    .venv/bin/python -m tests.benchmarks.taskpod [--secrets 300] [--latency-ms 20] [--rounds 3]

For each mode a daemon process is started against AWS holding `--secrets` variables, the task's
three variables are read through the Airflow backend, and the daemon is stopped, as the pod
would be. Per mode: AWS calls by API, and seconds from spawn to ready (`/readyz` 200) and to the
task's third answer. A wrong value fails the run; timings never do.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from tests.benchmarks.emulator import SlowAwsEmulator
from tests.benchmarks.floors import WrongValue
from tests.benchmarks.report import emit, section_parser, table
from tests.benchmarks.sidecar_process import aws_env, sidecar_process

VARIABLES = "airflow/variables/"
TASK_READS = ("task_key_1", "task_key_2", "task_key_3")
MODES = {
    "warm-up on (the default)": {},
    "warm-up off (SIDECAR_WARMUP=false)": {"warmup": "false"},
}


def _one_pod(aws: SlowAwsEmulator, settings: dict[str, str]) -> dict[str, Any]:
    from sidecar.backend import SidecarSecretsBackend

    aws.clear_counts()
    spawned = time.perf_counter()
    with sidecar_process(aws.endpoint, **settings) as daemon:
        ready = time.perf_counter() - spawned
        backend = SidecarSecretsBackend(**daemon.backend_kwargs)
        for key in TASK_READS:
            if backend.get_variable(key) != f"value of {key}":
                raise WrongValue(f"the task read a wrong value for {key}")
        answered = time.perf_counter() - spawned
        calls = aws.snapshot()
    return {"ready_s": ready, "third_answer_s": answered, "calls": calls}


def run(secrets: int = 300, latency_ms: float = 20.0, rounds: int = 3) -> dict[str, Any]:
    os.environ.update(aws_env())
    aws = SlowAwsEmulator(latency=latency_ms / 1000)
    aws.start()
    try:
        aws.reset()
        names = [f"other_{n}" for n in range(secrets - len(TASK_READS))] + list(TASK_READS)
        aws.seed({VARIABLES + name: f"value of {name}" for name in names})
        pods = {mode: [_one_pod(aws, settings) for _ in range(rounds)] for mode, settings in MODES.items()}
    finally:
        aws.stop()
    modes = {}
    for mode, runs in pods.items():
        modes[mode] = {
            "ready_s": statistics.median(r["ready_s"] for r in runs),
            "third_answer_s": statistics.median(r["third_answer_s"] for r in runs),
            "calls": runs[-1]["calls"],
            "calls_total": sum(runs[-1]["calls"].values()),
        }
    return {"secrets": secrets, "latency_ms": latency_ms, "rounds": rounds, "reads": len(TASK_READS), "modes": modes}


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            mode,
            f"{figures['ready_s']:.2f}",
            f"{figures['third_answer_s']:.2f}",
            ", ".join(f"{api} {count}" for api, count in figures["calls"].items()) or "none",
            figures["calls_total"],
        ]
        for mode, figures in result["modes"].items()
    ]
    return table(
        f"Task pod: a cold daemon, one task reading {result['reads']} of {result['secrets']:,} secrets "
        f"(AWS {result['latency_ms']:g} ms away; median of {result['rounds']} pods)",
        ["mode", "spawn -> ready, s", "spawn -> 3rd answer, s", "AWS calls", "total"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = section_parser("taskpod", __doc__)
    parser.add_argument("--secrets", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    return emit(run(args.secrets, args.latency_ms, args.rounds), render, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
