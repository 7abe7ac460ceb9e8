"""S3, counted: CPU instructions per cache hit, the daemon beside a trivial aiohttp handler.

    .venv/bin/python -m tests.benchmarks.instructions [--requests 1000]

Each server runs under valgrind's callgrind with counting off; one keep-alive client warms it,
then counting is switched on for exactly `--requests` hits of the same cached variable and off
again. Instructions do not move with a shared machine's load as requests per second do, so this
is where a change to the hit path shows, to a tenth of a per cent. Every answer is checked.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.benchmarks.floors import VALUE, WrongValue, aws_holding_the_probe, raw_client, trivial_aiohttp
from tests.benchmarks.report import emit, section_parser, table
from tests.benchmarks.sidecar_process import sidecar_process
from tests.support import TOKEN

DAEMON = "daemon, cached variable"
TRIVIAL = "trivial aiohttp handler"


def _callgrind(out_dir: str, name: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_dir}/{name}.%p"]


def _count(get: Callable[[], str], requests: int, out_dir: str, name: str) -> None:
    """Warm the server, then have callgrind count exactly `requests` requests."""
    for _ in range(200):
        if get() != VALUE:
            raise WrongValue(f"{name} answered a wrong value")
    pid = next(Path(out_dir).glob(f"{name}.*")).suffix[1:]  # callgrind names its file at start

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True, timeout=60)

    control("-i", "on")
    for _ in range(requests):
        if get() != VALUE:
            raise WrongValue(f"{name} answered a wrong value")
    control("--dump")  # before switching off: a run switched off shows nothing
    control("-i", "off")


def _counted(out_dir: str, name: str, requests: int) -> float:
    """Per request, from the dumps callgrind wrote by the time the server exited (summed: one
    when asked, one at exit with whatever came after)."""
    total = 0
    for dump in Path(out_dir).glob(f"{name}.*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):  # the instructions of this dump ("summary:" may say 0)
                total += int(line.split()[1])
    if total == 0:
        raise RuntimeError(f"callgrind counted nothing for {name}")
    return total / requests


@contextlib.contextmanager
def _daemon(endpoint: str, out_dir: str) -> Iterator[Callable[[], str]]:
    with sidecar_process(endpoint, prefix=_callgrind(out_dir, "daemon")) as process:
        yield raw_client(("127.0.0.1", process.port), TOKEN)


@contextlib.contextmanager
def _trivial(out_dir: str) -> Iterator[Callable[[], str]]:
    with trivial_aiohttp(prefix=_callgrind(out_dir, "trivial")) as port:
        yield raw_client(("127.0.0.1", port), TOKEN)  # the same request as the daemon gets


def run(requests: int = 1000) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"skipped": "valgrind not installed (apt-get install valgrind): no instruction counts in this run"}
    with aws_holding_the_probe() as aws, tempfile.TemporaryDirectory(prefix="callgrind-") as out_dir:
        with _daemon(aws.endpoint, out_dir) as get:
            _count(get, requests, out_dir, "daemon")
        with _trivial(out_dir) as get:
            _count(get, requests, out_dir, "trivial")
        counts = {DAEMON: _counted(out_dir, "daemon", requests), TRIVIAL: _counted(out_dir, "trivial", requests)}
    return {
        "requests": requests,
        "instructions_per_request": counts,
        "trivial_over_daemon": counts[TRIVIAL] / counts[DAEMON],
    }


def render(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"S3 counted: skipped: {result['skipped']}"
    counts = result["instructions_per_request"]
    rows = [[name, f"{count:,.0f}", f"{count / counts[TRIVIAL]:.3f}"] for name, count in counts.items()]
    return table(
        f"S3 counted: instructions per cache hit under callgrind ({result['requests']:,} hits each)",
        ["server", "instructions", "/ trivial"],
        rows,
        [
            f"trivial / daemon: {result['trivial_over_daemon']:.3f}, the hits/s ratio a CPU-bound daemon "
            "would reach if every instruction cost the same"
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = section_parser("instructions", __doc__)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args(argv)
    return emit(run(args.requests), render, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
