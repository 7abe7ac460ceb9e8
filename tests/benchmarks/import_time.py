"""Importing the backend: what `[secrets] backend` costs every Airflow process before any lookup.

    .venv/bin/python -m tests.benchmarks.import_time [--rev REV ...] [--runs N] [--quick] [--output PATH]
    (part of make bench; --quick, 3 runs, in make bench QUICK=1)

Each run is a fresh interpreter, `python -X importtime -c "import airflow.secrets; import <module>"`,
with its .pyc files written beforehand, as an installed package has them: Airflow is imported
first, as in every Airflow process, so only what the backend adds is counted. Contenders take turns
run by run, so a slow stretch of the machine falls on each alike. Rows: `sidecar.backend` from this
tree, from each `--rev` (its `sidecar/` exported with `git archive`), and the stock
`SecretsManagerBackend`'s module beside them. Per sidecar module, its own (self) time as well.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.benchmarks.report import median, table, turn, write_figures

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = Path(__file__).with_name("results") / "import_time.json"
BACKEND = "sidecar.backend"
STOCK = "airflow.providers.amazon.aws.secrets.secrets_manager"
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def _export(rev: str, into: Path) -> Path:
    """The `sidecar/` package of `rev`, in a directory of its own."""
    archive = subprocess.run(["git", "archive", rev, "sidecar"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _import(module: str, cwd: Path) -> dict[str, tuple[int, int]]:
    """One fresh interpreter's -X importtime lines: module -> (self µs, cumulative µs)."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env.pop("PYTHONPATH", None)
    code = f"import airflow.secrets; import {module}; print({module}.__file__)"
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    if module == BACKEND and not run.stdout.startswith(str(cwd)):  # the tree's own, not the installed one
        raise RuntimeError(f"{module} came from {run.stdout.strip()}, not from {cwd}")
    return {m[4]: (int(m[1]), int(m[2])) for m in map(LINE.match, run.stderr.splitlines()) if m}


def measure(revs: list[str], runs: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="import-time-") as scratch:
        contenders = [("sidecar, this tree", BACKEND, ROOT)]
        contenders += [(f"sidecar, {rev}", BACKEND, _export(rev, Path(scratch))) for rev in revs]
        contenders.append(("stock SecretsManagerBackend", STOCK, Path(scratch)))  # nothing there to shadow
        samples: dict[str, list[dict[str, tuple[int, int]]]] = {name: [] for name, _, _ in contenders}
        for _, module, cwd in contenders:
            _import(module, cwd)  # writes the .pyc files
        for round_ in range(runs):
            for name, module, cwd in turn(contenders, round_):
                samples[name].append(_import(module, cwd))
    ours = [line[BACKEND][1] for line in samples[contenders[0][0]]]
    results = []
    for name, module, _ in contenders:
        lines = samples[name]
        cumulative = [line[module][1] for line in lines]
        own = sorted({m for line in lines for m in line if m == "sidecar" or m.startswith("sidecar.")})
        results.append(
            {
                "contender": name,
                "module": module,
                "runs": runs,
                "cumulative_us": median(cumulative),
                # Run by run (the two ran one after the other): a drift of the machine cancels out.
                "this_tree_minus_it_us": median([a - b for a, b in zip(ours, cumulative, strict=True)]),
                "self_us": {m: median([line[m][0] for line in lines if m in line]) for m in own},
            }
        )
    return results


def render(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["contender"],
            f"{r['cumulative_us']:,.0f}",
            f"{r['this_tree_minus_it_us']:+,.0f}" if i else "",
            ", ".join(f"{m} {us:,.0f}" for m, us in r["self_us"].items()) or "-",
        ]
        for i, r in enumerate(results)
    ]
    return table(
        f"Importing the backend after Airflow: median of {results[0]['runs']} fresh interpreters",
        ["contender", "import, µs", "this tree minus it, µs", "each sidecar module's own time, µs"],
        rows,
        [
            "python -X importtime, with .pyc files; contenders take turns run by run",
            "this tree minus it: the median of the run-by-run differences (negative: this tree is faster)",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.import_time", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rev", action="append", default=[], help="a git revision to compare (repeatable)")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="3 runs: every contender imports, figures rough")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    results = measure(args.rev, 3 if args.quick else args.runs)
    print(render(results))
    write_figures(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
