"""The defaults chosen from measurements: each candidate TTL and listing interval, what it costs, what it bounds.

    .venv/bin/python -m tests.benchmarks.defaults [--quick] [--output PATH]     (make bench-defaults)

For each candidate (`SIDECAR_TTL`, `SIDECAR_LIST_INTERVAL`; the negative TTL at its default, twice
the interval) one run of `make bench`'s simulated day (200 keys each read once a minute, one
rotated every ten minutes, every read checked) and of `make fleet`'s steady state (1,000 pods,
300 secrets, an hour counted for a day), beside the bounds the README states, worked out from the
settings: a creation within 1.1 x the interval; a rotation or a deletion within AWS's listing lag
(up to 300 s) + 1.1 x the interval, never beyond the TTL; a revocation within the TTL.
"""

from __future__ import annotations

import os

from tests.benchmarks.sidecar_process import aws_env

os.environ.update(aws_env())  # before anything looks for credentials: nothing here may reach AWS

import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tests import fleet
from tests.benchmarks.emulator import SlowAwsEmulator
from tests.benchmarks.report import table, write_figures
from tests.benchmarks.scenarios import calls_per_day

CANDIDATES = [(300, 300), (900, 300), (1800, 300), (3600, 300), (3600, 600)]  # (TTL, listing interval), s
DEFAULT = (1800, 300)
LISTING_LAG = 300  # s: "ListSecrets might not reflect changes from the last five minutes"
LIST_SPREAD = 1.1  # a listing comes at most 10% later than its interval
TODAY = {"day": 4902, "fleet": 2_233_224}  # before the listing was a change feed (make bench, make fleet)
DEFAULT_OUTPUT = Path(__file__).with_name("results") / "defaults.json"


def bounds(ttl: float, interval: float) -> dict[str, float]:
    """Seconds until a change in AWS reaches Airflow, at worst, with these settings."""
    listed = min(ttl, LISTING_LAG + LIST_SPREAD * interval)
    return {"creation": LIST_SPREAD * interval, "rotation": listed, "deletion": listed, "revocation": ttl}


def _fleet(size: fleet.Size, ttl: int, interval: int) -> dict[str, Any]:
    logging.getLogger("sidecar").setLevel(logging.ERROR)  # a thousand daemons' warnings say nothing new
    result = fleet.run_simulated(fleet.steady(size, {"ttl": str(ttl), "list_interval": str(interval)}))
    return {key: result[key] for key in ("calls_per_day", "peak_per_s", "failed_lookups", "wrong_answers")}


def measure(quick: bool) -> list[dict[str, Any]]:
    size = fleet.QUICK if quick else fleet.FULL
    with ProcessPoolExecutor(2) as pool:
        fleets = [pool.submit(_fleet, size, ttl, interval) for ttl, interval in CANDIDATES]
        aws = SlowAwsEmulator()
        aws.start()
        try:
            days = [
                calls_per_day(
                    aws,
                    keys=200,
                    hours=2 if quick else 24,
                    step=10,
                    price_per_10k=fleet.PRICE_PER_10K,
                    progress=lambda _message: None,
                    settings_env={"ttl": str(ttl), "list_interval": str(interval)},
                )
                for ttl, interval in CANDIDATES
            ]
        finally:
            aws.stop()
        results = []
        for (ttl, interval), day, steady in zip(CANDIDATES, days, fleets, strict=True):
            results.append(
                {
                    "ttl_s": ttl,
                    "list_interval_s": interval,
                    "default": (ttl, interval) == DEFAULT,
                    "bounds_s": bounds(ttl, interval),
                    "day_calls": day["sidecar"]["calls_per_day_total"],
                    "day_rotations": day["sidecar"]["rotations"],
                    "fleet": {"pods": size.pods, "secrets": size.secrets, **steady.result()},
                }
            )
    return results


def render(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        b, steady = r["bounds_s"], r["fleet"]
        rows.append(
            [
                f"{r['ttl_s']:,} / {r['list_interval_s']:,}" + (" (default)" if r["default"] else ""),
                f"{b['creation']:,.0f}",
                f"{b['rotation']:,.0f}",
                f"{b['revocation']:,.0f}",
                f"{r['day_calls']:,.0f} ({TODAY['day'] / r['day_calls']:.1f}x fewer)",
                f"{steady['calls_per_day']:,.0f}",
                f"{steady['peak_per_s'].get('ListSecrets', 0):,}",
                f"{steady['failed_lookups']} / {steady['wrong_answers']}",
            ]
        )
    return table(
        "Defaults: what each TTL and listing interval costs and bounds",
        [
            "TTL / listing interval, s",
            "creation within, s",
            "rotation, deletion within, s",
            "revocation within, s",
            "simulated day, calls/day",
            f"fleet of {results[0]['fleet']['pods']:,}, calls/day",
            "peak ListSecrets/s",
            "failed / wrong",
        ],
        rows,
        [
            f"the day: 200 keys read once a minute, a rotation every ten minutes (was {TODAY['day']:,} calls/day)",
            f"the fleet: make fleet's steady state, counted for a day (was {TODAY['fleet']:,}); ListSecrets: 100/s",
            f"rotation and deletion: AWS's listing lag (up to {LISTING_LAG} s) + 1.1 x the interval, at most the TTL",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.defaults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 pods and a 2-hour day")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator would log every request
    results = measure(args.quick)
    print(render(results))
    write_figures(results, args.output)
    wrong = sum(r["fleet"]["wrong_answers"] for r in results)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
