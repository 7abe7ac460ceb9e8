"""The daemon with a window into its memory, for the soak's `--trace-memory DIR` (diagnostics only).

    python -m tests.benchmarks.memory_trace DIR serve      (in place of `python -m sidecar serve`)

Runs `sidecar.cli.main(["serve"])` with tracemalloc on (1 frame) and, on each SIGUSR2, writes
DIR/<n>.json: tracemalloc's total and its allocations by line, Python objects by type, asyncio
tasks by coroutine, threads, open fds by what they point at (TCP peers by port), and glibc's
malloc_info (arenas and their free space). `tests.benchmarks.memory_trace --compare A B`
prints what grew between two of them. Nothing of this ships in the package: the soak starts
the daemon through here only when asked.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import re
import signal
import sys
import threading
import traceback
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

TOP = 40  # lines kept per table
# Types whose holders each snapshot names (a few of each: gc.get_referrers walks the whole heap).
HELD = ("RequestHandler", "UpstreamError", "ClientResponse", "traceback", "TimerHandle", "Entry")
SAMPLE = 8


def fds() -> dict[str, int]:
    """Open fds by kind; TCP sockets by local or remote port as the inode table shows them."""
    inodes: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            inodes[inode] = f"tcp {int(local.split(':')[1], 16)}->{int(remote.split(':')[1], 16)} st{state}"
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        kinds[inodes.get(found.group(1), "socket (not tcp)") if found else re.sub(r"\d+", "N", target)] += 1
    return dict(kinds)


def malloc_info() -> str:
    """glibc's malloc_info(0, stream) as XML: each arena's system bytes and free chunks."""
    libc = ctypes.CDLL(None)
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    return (buffer.value or b"").decode()


def arenas(xml: str) -> dict[str, Any]:
    """From malloc_info: how many heaps (arenas), and the totals of system and free (fastbin +
    rest) bytes."""
    total = re.search(
        r"</heap>\s*<total type=\"fast\" count=\"\d+\" size=\"(\d+)\"/>\s*"
        r"<total type=\"rest\" count=\"\d+\" size=\"(\d+)\"/>.*?"
        r"<system type=\"current\" size=\"(\d+)\"/>",
        xml,
        re.S,
    )
    heaps = len(re.findall(r"<heap nr=", xml))
    if not total:
        return {"heaps": heaps}
    fast, rest, system = (int(x) for x in total.groups())
    return {"heaps": heaps, "system_bytes": system, "free_bytes": fast + rest}


def describe(o: Any) -> str:
    name = type(o).__qualname__
    if isinstance(o, dict):
        return f"dict({','.join(sorted(map(str, o))[:6])})"
    if type(o).__name__ == "frame":
        return f"frame {o.f_code.co_qualname} {o.f_code.co_filename.rsplit('/', 2)[-1]}:{o.f_lineno}"
    if type(o).__name__ == "cell":
        return "cell"
    return name


def holders(objects: list[Any]) -> dict[str, dict[str, int]]:
    """For a few objects of each HELD type: what refers to them, two steps out."""
    found: dict[str, dict[str, int]] = {}
    for kind in HELD:
        sample = [o for o in objects if type(o).__qualname__ == kind][:SAMPLE]
        paths: Counter[str] = Counter()
        for o in sample:
            for ref in gc.get_referrers(o):
                if ref is objects or ref is sample:
                    continue
                above = [describe(r) for r in gc.get_referrers(ref) if r is not objects and r is not sample][:3]
                paths[f"{describe(ref)} <- {' | '.join(above)}"] += 1
        found[kind] = dict(paths.most_common(12))
    return found


def snapshot(directory: Path, count: list[int]) -> None:
    count[0] += 1
    gc.collect()
    traced = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = traced.statistics("lineno")
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        tasks = set()
    coroutines = Counter(getattr(t.get_coro(), "__qualname__", repr(t.get_coro())) for t in tasks)
    objects = gc.get_objects()
    types = Counter(type(o).__qualname__ for o in objects)
    held = holders(objects)
    del objects
    status = Path("/proc/self/status").read_text()
    xml = malloc_info()
    data = {
        "rss_kib": int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)),  # type: ignore[union-attr]
        "traced_bytes": sum(s.size for s in lines),
        "by_line": {str(s.traceback[0]): [s.size, s.count] for s in lines[: TOP * 5]},
        "objects": dict(types.most_common(TOP * 5)),
        "tasks": dict(coroutines),
        "threads": [t.name for t in threading.enumerate()],
        "fds": fds(),
        "malloc": arenas(xml),
        "holders": held,
    }
    (directory / f"{count[0]}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    (directory / f"{count[0]}.malloc.xml").write_text(xml, encoding="utf-8")


def guarded(directory: Path, count: list[int]) -> None:
    """A failed snapshot is written down, never raised into whatever the daemon was running."""
    try:
        snapshot(directory, count)
    except Exception:
        (directory / f"{count[0]}.error.txt").write_text(traceback.format_exc(), encoding="utf-8")


def compare(a: Path, b: Path) -> None:
    one, two = (json.loads(p.read_text(encoding="utf-8")) for p in (a, b))
    print(f"RSS {one['rss_kib']} -> {two['rss_kib']} KiB; traced {one['traced_bytes']} -> {two['traced_bytes']} B")
    print(f"malloc {one['malloc']} -> {two['malloc']}")
    print(f"threads {len(one['threads'])} -> {len(two['threads'])}; fds {one['fds']} -> {two['fds']}")
    print(f"tasks {sum(one['tasks'].values())} -> {sum(two['tasks'].values())}: {two['tasks']}")
    for table in ("by_line", "objects"):
        growth = Counter({key: size(two, table, key) - size(one, table, key) for key in two[table]})
        print(f"\n{table}, largest growth:")
        for key, grown in growth.most_common(25):
            print(f"  {grown:+10d}  {key}")


def size(snapshot: dict[str, Any], table: str, key: str) -> int:
    """Bytes of a line ([size, count] in by_line), or objects of a type; 0 where it is not listed."""
    value = snapshot[table].get(key, 0)
    return int(value[0] if isinstance(value, list) else value)


def main(argv: list[str]) -> int:
    if argv[0] == "--compare":
        compare(Path(argv[1]), Path(argv[2]))
        return 0
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(1)
    count = [0]
    signal.signal(signal.SIGUSR2, lambda *_: guarded(directory, count))
    from sidecar.cli import main as sidecar_main

    return sidecar_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
