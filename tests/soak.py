"""A soak: the daemon as its own process, Airflow-like clients, and AWS flapping behind a fault layer.

    python -m tests.soak [--seconds 60] [--clients 4] [--names N] [--json PATH]        (make soak)
    python -m tests.soak --seconds 600 --names 2000        (the memory run of docs/benchmarks.md)

Loopback only; it stops by itself. Pieces:

- AWS is moto's server (`tests.support.AwsEmulator`, fake credentials), with 20 variables and 5
  connections under airflow/variables and airflow/connections, each value naming its key and a
  version (`var03#v2`; connections a URI ending `?version=2`), and 10 keys that never exist.
- A `tests.faults.FaultProxy` sits between the daemon and moto. ListSecrets lags for the whole
  run (`set("ListSecrets", "lag", delay=LAG)`, LAG 1.5 s: each secret listed as it was 1.5 s
  before), composed with the phases below: while they fault "*", ListSecrets faults alike.
- The daemon runs as its own process (`python -m sidecar serve`) on a free port with a token file,
  `endpoint_url` = the fault layer, and times chosen so that a change's freshness rests on the
  listing, not on expiry: TTL 30 s (no value expires during the 20-second form; in the minute,
  refresh-ahead falls in the fault phases), listing every 1 s, negative TTL 10 s (a created secret is
  found by the listing's re-asking of misses, not by a miss expiring), max stale 600 s (an outage
  of the whole run is served stale), request timeout 3 s.
- `--clients` Airflow-like processes (each builds `sidecar.backend.SidecarSecretsBackend` with
  `url` and `token_file`, as Airflow would, and `local_ttl` 0.5 s) loop until the end over present keys (60%), keys
  that never exist (15%), and keys created during the run (25%: half of them among the names
  created in the last 4 s or the next 1 s, so each is asked for before and after it exists,
  half among those created so far), every 20th request a raw `http.client` GET with
  `refresh=true`. Each records, per answer: key, status, value, latency and `time.monotonic()`
  at completion (CLOCK_MONOTONIC is system-wide on Linux, so these compare across processes)
  into its own JSON file, in a temporary directory deleted at the end: the only place secret
  values are written.
- The orchestrator, straight to moto, logging the monotonic time before each call and then
  telling the fault layer (`proxy.observe()`, so the lag counts from the change as AWS's does):
  rotates one secret a second (`put_secret_value`, version N+1) and creates one a second, half
  a second after each rotation (`new000`, `new_conn001`, ...: a variable, then a connection,
  version 1), both through all phases. It flaps AWS through the fault layer: normal for the first quarter
  (warm-up), then throttle, slow (1.5 s per request), blackhole, down and 5xx in equal shares,
  then normal for the final recovery: a fifth of the run, at least B + 5 s.

With `--events` the daemon also hears AWS's change events (SIDECAR_EVENTS=sns, its queue and the
topic's subscription through the fault layer, so each fault phase cuts the events too): after each
rotation the orchestrator publishes the event AWS would send, but every DROP_EVERY-th, which is
lost on purpose, and a CloudTrail CreateSecret event for every other creation. The backstop listing
runs every EVENTS_LIST_INTERVAL (3 s), and the bounds below use it in place of LIST_INTERVAL: an
answer must be as fresh whether its rotation was announced or lost. The queue must be gone after
the daemon's stop.

B = min(TTL, LAG + 1.1 x LIST_INTERVAL) + LOCAL_TTL + 1 s = 4.1 s: a rotation is served once a
listing shows it (its lag, then the next listing, jittered up to 1.1 x the interval), or at the
latest at expiry, and a client's backend asks again once its answer is LOCAL_TTL old; the 1 s is
for the listing, the batch and a loaded machine.

Checks; any failure is printed and the exit status is 1:

1. wrong values: a 200 for key k is k's own value with version N no newer than the latest
   rotation started before the answer completed; a 200 for a created key before its creation
   started is wrong; a present key is never 404; a key that never exists never gets a value.
2. only documented statuses: 200, 404 and 503 (the backend's SidecarError "answered 503").
   Anything else (401, 429, 500, connection errors, timeouts, other exceptions) fails.
3. freshness after the final recovery: an answer completing at t >= recovery + B has a version
   no older than the latest rotation started at or before t - B. This covers every key rotated
   before the recovery, and rotations during the final phase too.
4. creations: an answer for a created key completing at t >= its creation + 1.1 x
   LIST_INTERVAL + LOCAL_TTL + 1 s and t >= recovery + B is a 200 with its value; a 404 (or 503) then is
   "created secret not served within the bound". The daemon asks AWS for a miss by name and
   asks the misses read since the last listing again after each listing, so the listing's lag
   does not delay a creation.
5. the daemon's RSS (/proc/PID/status VmRSS) and open fds (/proc/PID/fd, by kind: clients' and
   AWS connections, the rest), sampled each second, in phases: warming (the first minute, or the
   first quarter of a shorter run), then the rest, and of it the part after the last creation
   (`--names`: creations stop halfway) when it lasts CALM_MIN (30 s) or more. Over the rest and
   over the part after creations, the end may not exceed the start by more than the noise:
   RSS_NOISE for RSS, FD_SLACK for the fds other than connections to AWS, which may not outnumber
   the AWS clients' pools (AWS_POOL, a connection to AWS leaked holds a slot for good). A phase's
   start is the largest of the samples in the 2.5 s before it, its end the smallest in its last
   2.5 s (clients still running): a connection open for a moment cannot fail the check, a leak
   shows in every sample. A fall is no leak and passes. Each phase's growth a minute (least
   squares) is reported too. `--trace-memory DIR` runs the daemon under tracemalloc with a
   snapshot every TRACE_EVERY s (tests/benchmarks/memory_trace.py: what grew, by line and by
   type, asyncio tasks, fds, glibc's arenas); each snapshot pauses the daemon for seconds and
   tracemalloc's own memory grows with the run, so its timing and RSS checks mean nothing.
6. the daemon exits 0 on SIGTERM; every client exits 0; there were lookups, rotations before the
   recovery, creations, and answers checked by checks 3 and 4 (else they would be empty).

Prints Markdown tables and writes JSON (`--json`, default tests/benchmarks/results/soak.json,
git-ignored) with the counts: rotations (and how many some answer served), creations, answers
checked by each check; neither holds a secret value.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "tests" / "benchmarks" / "results" / "soak.json"

TTL = 30.0  # well above LAG + 1.1 x LIST_INTERVAL: rotations are served by the listing, not expiry
NEGATIVE_TTL = 10.0  # above the creation bound: created secrets are served by the listing's re-asking
LIST_INTERVAL = 1.0
LAG = 1.5  # seconds ListSecrets lags behind AWS, the whole run
SLACK = 1.0  # seconds beyond each bound: the listing, the batch, a loaded machine
LOCAL_TTL = 0.5  # the clients' backends keep each answer this long: it adds to every bound
BOUND = min(TTL, LAG + 1.1 * LIST_INTERVAL) + LOCAL_TTL + SLACK  # B: a rotation is served within it
CREATED_BOUND = 1.1 * LIST_INTERVAL + LOCAL_TTL + SLACK  # a creation is served within it, whatever the lag
EVENTS_LIST_INTERVAL = 3.0  # with --events: the backstop listing while events arrive
DROP_EVERY = 4  # with --events: every 4th rotation's event is lost on purpose
DAEMON_SETTINGS = {
    "ttl": f"{TTL:g}",
    "negative_ttl": f"{NEGATIVE_TTL:g}",
    "list_interval": f"{LIST_INTERVAL:g}",
    "max_stale": "600",
    "request_timeout": "3",
}
SLOW_DELAY = 1.5  # seconds the fault layer holds each answer during "slow"
# Throttling first: botocore's adaptive retry mode keeps slowing the client down for seconds after
# AWS stops throttling, and the freshness bounds after the final recovery are the daemon's, not the
# client-side limiter's.
FAULTS = ("throttle", "slow", "blackhole", "down", "5xx")
APIS = ("GetSecretValue", "BatchGetSecretValue", "ListSecrets")
ROTATE_EVERY = 1.0  # seconds between rotations
CREATE_EVERY = 1.0  # seconds between creations
FINAL_MIN = BOUND + 5.0  # the final recovery lasts at least this: 5 s of answers checked
VARIABLES = [f"var{i:02d}" for i in range(20)]
CONNECTIONS = [f"conn{i}" for i in range(5)]
PRESENT = [("variables", k) for k in VARIABLES] + [("connections", k) for k in CONNECTIONS]
ABSENT = [("variables", f"absent{i}") for i in range(7)] + [("connections", f"absent_conn{i}") for i in range(3)]
PREFIX = {"variables": "airflow/variables/", "connections": "airflow/connections/"}
ABSENT_SHARE = 0.15
# Half of it near the names being created now (asked before and after they exist), half among
# those created so far: not many misses to ask again at each listing, as a DAG would not ask.
CREATED_SHARE = 0.25
NEAR = (-4, 1)  # "near": from 4 creations back (4 s) to 1 ahead (1 s)
REFRESH_EVERY = 20  # every 20th request of a client is a raw GET with refresh=true
CLIENT_PAUSE = 0.005  # seconds between a client's requests: Airflow-like, not a load test
DOCUMENTED = (200, 404, 503)
# Open fds other than connections to AWS may grow by this many at most after warm-up: a leak grows
# with the 20,000 requests, not by 2.
FD_SLACK = 2
# Connections to AWS are the AWS clients' pools: opened for calls at once (a batch fetched one by
# one, a recovery's backlog), closed after aiobotocore's keep-alive idle time, at most
# SIDECAR_MAX_UPSTREAM (32 by default) in the store's pool. Measured: +0 to +4 between warm-up and
# the end in 20 to 150 s, the same without creations. A connection leaked holds its slot for good:
# more than the pool at the end is a leak.
AWS_POOL = 32
EVENTS_POOL = 4  # with --events, each of the SQS and SNS clients' pools (events.CALLS_IN_FLIGHT)
STARTUP_TIMEOUT = 120.0
TRACE_EVERY = 15  # --trace-memory: seconds between the daemon's snapshots
WARMING = 60.0  # the daemon's memory warms up for a minute (a quarter of a shorter run)...
CALM_MIN = 30.0  # ...and is checked once creations stop, if they stop this long before the end
WINDOW = 2.5  # seconds of samples a phase's start and end are picked from
# KiB the daemon's RSS may grow after warm-up: the error paths Python loads the first time AWS fails
# (+0.2 to +0.7 MB measured in 20 to 150 s). Failures kept with their tracebacks grew it by 13 MB in
# 150 s (docs/benchmarks.md, "Soak").
RSS_NOISE = 2048
# KiB a name created may cost the daemon (its listing, cache entry, lookup memo): twice the 1.8 KiB
# measured while 2,000 names were created (docs/benchmarks.md, "Soak").
NAME_KIB = 4


def created_keys(seconds: float, names: int | None = None) -> tuple[list[tuple[str, str]], float]:
    """The keys the orchestrator creates, in order (variables and connections alternately), and the
    seconds between two: one every CREATE_EVERY through the run, or `names` of them through its
    first half (then none: the daemon's memory must stay flat once they stop). The last ones may
    fall after the end and never be created."""
    count, every = (int(seconds / CREATE_EVERY), CREATE_EVERY) if names is None else (names, seconds / 2 / names)
    keys = [("variables", f"new{i:03d}") if i % 2 == 0 else ("connections", f"new_conn{i:03d}") for i in range(count)]
    return keys, every


def secret_value(kind: str, key: str, version: int) -> str:
    if kind == "connections":
        return f"postgresql://soak:pw@{key}.db.invalid:5432/{key}?version={version}"
    return f"{key}#v{version}"


def version_of(kind: str, key: str, value: str) -> int | None:
    """The version a value carries, or None when it is not a value of `key` at all."""
    if kind == "connections":
        form = rf"postgresql://soak:pw@{re.escape(key)}\.db\.invalid:5432/{re.escape(key)}\?version=(\d+)"
    else:
        form = rf"{re.escape(key)}#v(\d+)"
    found = re.fullmatch(form, value)
    return int(found.group(1)) if found else None


# --- a client process ---


def run_client(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    from sidecar.backend import SidecarError, SidecarSecretsBackend  # imports Airflow, as Airflow has

    backend = SidecarSecretsBackend(url=config["url"], token_file=config["token_file"], local_ttl=LOCAL_TTL)
    token = Path(config["token_file"]).read_text(encoding="utf-8").strip()
    host, port = config["url"].removeprefix("http://").rsplit(":", 1)
    rng = random.Random(config["seed"])
    created = [(kind, key) for kind, key in config["created"]]
    create_every = config["create_every"]

    def pick(t0: float) -> tuple[str, str]:
        share = rng.random()
        if share < ABSENT_SHARE:
            return rng.choice(ABSENT)
        if share < ABSENT_SHARE + CREATED_SHARE and created:
            last = int((time.monotonic() - t0) / create_every - 0.5)  # the latest one created, about
            offset = rng.randint(*NEAR) if rng.random() < 0.5 else -rng.randint(0, max(0, last))
            return created[min(len(created) - 1, max(0, last + offset))]
        return rng.choice(PRESENT)

    def ask(kind: str, key: str) -> tuple[int | None, str | None, str | None]:
        """(status, value, error) through the backend, as Airflow asks."""
        try:
            value = backend.get_variable(key) if kind == "variables" else backend.get_conn_value(key)
        except SidecarError as exc:
            found = re.search(r"answered (\d{3})", str(exc))
            status = int(found.group(1)) if found else 401 if "refused the token" in str(exc) else None
            return status, None, f"{type(exc).__name__}: {exc}"[:300]
        except Exception as exc:
            return None, None, f"{type(exc).__name__}: {exc}"[:300]
        return (200 if value is not None else 404), value, None

    def refresh(kind: str, key: str) -> tuple[int | None, str | None, str | None]:
        """(status, value, error) of a raw GET with refresh=true."""
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request(
                "GET", f"/v1/{kind}/{quote(key, safe='')}?refresh=true", headers={"X-Sidecar-Token": token}
            )
            response = connection.getresponse()
            body = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return None, None, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            connection.close()
        if response.status == 200:
            return 200, body["value"], None
        return response.status, None, None if response.status == 404 else f"HTTP {response.status}: {body.get('error')}"

    ask("variables", VARIABLES[0])  # imports done, connection open: then say ready
    Path(config["ready"]).touch()
    _, end_text, t0_text = sys.stdin.readline().split()  # "go END T0"
    end, t0 = float(end_text), float(t0_text)
    records: list[list[Any]] = []
    while time.monotonic() < end:
        raw = (len(records) + 1) % REFRESH_EVERY == 0
        kind, key = pick(t0)
        started = time.monotonic()
        status, value, error = (refresh if raw else ask)(kind, key)
        done = time.monotonic()
        records.append([kind, key, "refresh" if raw else "backend", status, value, error, done - started, done])
        time.sleep(CLIENT_PAUSE)
    Path(config["out"]).write_text(json.dumps(records), encoding="utf-8")
    return 0


# --- the orchestrator ---


def schedule(seconds: float) -> list[tuple[str, float, float]]:
    """(kind, start, end) offsets: warm-up normal, the faults in equal shares, a final normal."""
    warm, final = seconds / 4, max(FINAL_MIN, seconds / 5)
    each = (seconds - warm - final) / len(FAULTS)
    if each < 1.0:
        raise SystemExit("--seconds: at least 20, so that each fault lasts a second")
    phases, start = [("normal", 0.0, warm)], warm
    for kind in FAULTS:
        phases.append((kind, start, start + each))
        start += each
    phases.append(("normal", start, seconds))
    return phases


def apply_phase(proxy: Any, kind: str) -> None:
    """Not clear(): that would end ListSecrets' lag. Black holes close when "*" stops being one."""
    if kind == "down":
        proxy.down()  # first: open connections (black holes included) are reset at once
        proxy.set("*", "normal")
    else:
        proxy.set("*", kind, delay=SLOW_DELAY if kind == "slow" else 0.0)
        proxy.up()


class Sampler(threading.Thread):
    """The daemon's RSS (KiB) and open fds, once a second, the fds by what they are: connections
    from clients (to the daemon's `port`), to AWS (to the fault layer's `aws_port`), other sockets,
    files, and the rest (pipes, epoll)."""

    def __init__(self, pid: int, port: int, aws_port: int, trace_every: int = 0) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.ports = (port, aws_port)
        self.trace_every = trace_every  # --trace-memory: SIGUSR2 (a snapshot) every this many samples
        self.samples: list[tuple[float, int, int, dict[str, int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError, ValueError):
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
                kinds = self.fds()
                self.samples.append((time.monotonic(), rss, sum(kinds.values()), kinds))
                if self.trace_every and len(self.samples) % self.trace_every == 1:
                    os.kill(self.pid, signal.SIGUSR2)
            self.halt.wait(1.0)

    def fds(self) -> dict[str, int]:
        port, aws_port = self.ports
        sockets = {}  # inode -> (local port, remote port), from the network namespace's tables
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for row in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                    cols = row.split()
                    sockets[cols[9]] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16))
        kinds: Counter[str] = Counter()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                inode = target[8:-1] if target.startswith("socket:[") else None
                local, remote = sockets.get(inode or "", (0, 0))
                if inode is None:
                    kinds["files" if target.startswith("/") else "other"] += 1
                elif local == port:
                    kinds["clients" if remote else "listening"] += 1
                else:
                    kinds["AWS" if remote == aws_port else "other sockets"] += 1
        return dict(kinds)

    def pick(self, start: float, end: float, pick: Any) -> tuple[int, int, dict[str, int]] | None:
        """The sample between `start` and `end` with the `pick` (max or min) RSS, and the same for
        the fds (with their kinds): a connection open for a moment cannot fail a check, a leak
        shows in every sample."""
        window = [sample for sample in self.samples if start <= sample[0] <= end]
        if not window:
            return None
        fds = pick(window, key=lambda sample: sample[2])
        return pick(sample[1] for sample in window), fds[2], fds[3]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def daemon_ready(process: subprocess.Popen[bytes], url: str) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"the daemon exited with {process.returncode} before it was ready")
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def metrics(url: str) -> dict[str, float]:
    """The daemon's cache lookups, upstream calls and events by label, from /metrics (no key names there)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = re.findall(r"^(sidecar_(?:cache_lookups|upstream_calls|events_received)_total\{[^}]*\}) (\S+)$", text, re.M)
    return {name: float(value) for name, value in found}


def use_events() -> None:
    """--events: the backstop listing's interval in every bound in place of LIST_INTERVAL."""
    global BOUND, CREATED_BOUND, FINAL_MIN, AWS_POOL
    AWS_POOL += 2 * EVENTS_POOL  # the SQS and SNS clients' pools
    BOUND = min(TTL, LAG + 1.1 * EVENTS_LIST_INTERVAL) + LOCAL_TTL + SLACK
    CREATED_BOUND = 1.1 * EVENTS_LIST_INTERVAL + LOCAL_TTL + SLACK
    FINAL_MIN = BOUND + 5.0


def run(args: argparse.Namespace) -> int:
    from tests.benchmarks.sidecar_process import aws_env

    os.environ.update(aws_env())  # before boto3 looks for credentials: nothing here reaches AWS
    from tests.faults import FaultProxy
    from tests.support import AwsEmulator

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator would log every request
    phases = schedule(args.seconds)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        aws = AwsEmulator()
        aws.start()
        stack.callback(aws.stop)
        moto = aws.client()
        for kind, key in PRESENT:
            moto.create_secret(Name=PREFIX[kind] + key, SecretString=secret_value(kind, key, 1))
        proxy = stack.enter_context(FaultProxy(aws.endpoint))
        proxy.set("ListSecrets", "lag", delay=LAG)  # the whole run; what exists now is listed at once
        topic = aws.client("sns").create_topic(Name="soak-events")["TopicArn"] if args.events else None
        daemon, url, daemon_log = start_daemon(stack, tmp, proxy.endpoint, topic, args.trace_memory)
        port, aws_port = (int(address.rsplit(":", 1)[1]) for address in (url, proxy.endpoint))
        sampler = Sampler(daemon.pid, port, aws_port, TRACE_EVERY if args.trace_memory else 0)
        sampler.start()
        pool, create_every = created_keys(args.seconds, args.names)
        clients = start_clients(stack, tmp, url, args.clients, pool, create_every)

        t0 = time.monotonic()
        end = t0 + args.seconds
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(f"go {end!r} {t0!r}\n".encode())
            client.stdin.close()
        progress(f"running {args.seconds:g}s with {args.clients} clients: {', '.join(p[0] for p in phases)}")
        layer_before, moto_before = proxy.counts(), dict(aws.calls)
        announce = Announcer(aws.client("sns"), topic) if topic else None
        rotations, creations, recovery, observed = drive(proxy, moto, phases, t0, end, pool, create_every, announce)
        layer_calls = Counter(proxy.counts()) - Counter(layer_before)
        moto_calls = Counter(aws.calls) - Counter(moto_before)
        for api in ("PutSecretValue", "CreateSecret", "Publish"):  # the orchestrator's own calls
            moto_calls.pop(api, None)
        moto_calls["ListSecrets"] -= observed  # and the fault layer's snapshots it asked for

        client_codes, records = collect(clients, tmp)
        sampler.halt.set()
        sampler.join()
        daemon_metrics = metrics(url) if daemon.poll() is None else {}
        daemon_code, notable = stop_daemon(daemon, daemon_log)
        queues_left = aws.client("sqs").list_queues().get("QueueUrls", []) if topic else []

    report = analyse(records, rotations, creations, pool, phases, t0, recovery)
    report["daemon_resources"], memory_failures = memory(sampler, t0, end, creations)
    report["failures"] += memory_failures
    minutes = args.seconds / 60
    report.update(
        settings={
            "seconds": args.seconds,
            "clients": args.clients,
            "slow_delay_s": SLOW_DELAY,
            "list_lag_s": LAG,
            "rotation_bound_s": BOUND,
            "creation_bound_s": CREATED_BOUND,
            "rotate_every_s": ROTATE_EVERY,
            "create_every_s": create_every,
            "events": bool(args.events),
            **DAEMON_SETTINGS,
        },
        phases=[
            {"kind": k, "label": label_of(phases, i), "start_s": round(s, 2), "end_s": round(e, 2)}
            for i, (k, s, e) in enumerate(phases)
        ],
        aws_calls={
            "minutes": minutes,
            "at_fault_layer": dict(layer_calls),
            "at_moto": dict(moto_calls),
            "at_fault_layer_per_minute": sum(layer_calls.values()) / minutes,
            "at_moto_per_minute": sum(moto_calls.values()) / minutes,
        },
        daemon_metrics=daemon_metrics,
        daemon_log={
            "warnings": sum(" WARNING " in line for line in notable),
            "errors": sum(" WARNING " not in line for line in notable),
            "first_lines": notable[:30],
        },
        daemon_exit_code=daemon_code,
        client_exit_codes=client_codes,
    )
    if announce is not None:
        report["events"] = {"published": announce.published, "dropped": announce.dropped, "queues_left": queues_left}
    failures = report["failures"]
    if queues_left:
        failures.append(f"the daemon's stop left {len(queues_left)} queues behind")
    if daemon_code != 0:
        failures.append(f"the daemon exited {daemon_code!r} on SIGTERM, not 0")
    if any(code != 0 for code in client_codes):
        failures.append(f"client exit codes {client_codes}")
    print(markdown(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nJSON: {args.json}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("soak failed" if failures else "soak passed")
    return 1 if failures else 0


def start_daemon(
    stack: contextlib.ExitStack, tmp: Path, endpoint: str, topic: str | None, trace: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, Any]:
    """`python -m sidecar serve` on a free port with a token file, AWS at `endpoint`, and with a
    `topic` its events through the same endpoint; ready when it returns."""
    from tests.benchmarks.sidecar_process import aws_env, free_port
    from tests.support import REGION

    token_file = tmp / "token"
    token_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
    token_file.chmod(0o600)
    port = free_port()
    env = {name: value for name, value in aws_env().items() if not name.startswith("SIDECAR_")}
    env.update(
        SIDECAR_TOKEN_FILE=str(token_file),
        SIDECAR_HOST="127.0.0.1",
        SIDECAR_PORT=str(port),
        SIDECAR_BACKEND_KWARGS=json.dumps({"region_name": REGION, "endpoint_url": endpoint}),
        SIDECAR_LOG_LEVEL="info",
        **{f"SIDECAR_{name.upper()}": value for name, value in DAEMON_SETTINGS.items()},
    )
    if topic:
        env.update(
            SIDECAR_EVENTS="sns",
            SIDECAR_EVENTS_TOPIC_ARN=topic,
            SIDECAR_EVENTS_LIST_INTERVAL=f"{EVENTS_LIST_INTERVAL:g}",
            AWS_ENDPOINT_URL_SQS=endpoint,
            AWS_ENDPOINT_URL_SNS=endpoint,
        )
    log = stack.enter_context((tmp / "daemon.log").open("w+b"))
    command = ["-m", "tests.benchmarks.memory_trace", str(trace)] if trace else ["-m", "sidecar"]
    daemon = subprocess.Popen(
        [sys.executable, *command, "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    stack.callback(kill, daemon)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: daemon_ready(daemon, url), STARTUP_TIMEOUT, "the daemon to be ready")
    except RuntimeError:
        print(tail(log), file=sys.stderr)
        raise
    return daemon, url, log


def start_clients(
    stack: contextlib.ExitStack, tmp: Path, url: str, count: int, pool: list[tuple[str, str]], create_every: float
) -> list[subprocess.Popen[bytes]]:
    """`count` client processes, each with its lookups done once (imports, connection): ready to go.
    They ask for the keys in `pool` too, which the orchestrator creates during the run."""
    from tests.support import airflow_env

    env = airflow_env(tmp / "airflow")
    clients = []
    for n in range(count):
        config = {"url": url, "token_file": str(tmp / "token"), "seed": n, "created": pool}
        config.update(create_every=create_every, ready=str(tmp / f"client{n}.ready"), out=str(tmp / f"client{n}.json"))
        (tmp / f"client{n}.config").write_text(json.dumps(config), encoding="utf-8")
        client = subprocess.Popen(
            [sys.executable, "-m", "tests.soak", "--client", str(tmp / f"client{n}.config")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stack.enter_context((tmp / f"client{n}.log").open("w+b")),
        )
        stack.callback(kill, client)
        clients.append(client)

    def ready() -> bool:
        for n, client in enumerate(clients):
            if client.poll() is not None:
                raise RuntimeError(f"client {n} exited before it was ready:\n{tail_file(tmp / f'client{n}.log')}")
        return all((tmp / f"client{n}.ready").exists() for n in range(count))

    wait_until(ready, STARTUP_TIMEOUT, "the clients to be ready")
    return clients


class Announcer:
    """--events: publishes what AWS would send to the topic, straight to moto (EventBridge's side
    of the fault layer), losing every DROP_EVERY-th rotation's event on purpose."""

    def __init__(self, sns: Any, topic: str) -> None:
        self._sns = sns
        self._topic = topic
        self.published = 0
        self.dropped = 0

    def rotated(self, name: str, count: int) -> None:
        if count % DROP_EVERY == 0:
            self.dropped += 1
            return
        detail = {"name": name, "labelUpdated": "AWSCURRENT", "versionId": f"v{count}"}
        self._publish({"source": "aws.secretsmanager", "detail-type": "Secret Label Updated", "detail": detail})

    def created(self, name: str, count: int) -> None:
        if count % 2:
            return  # the other half: found by the misses asked again
        detail = {
            "eventSource": "secretsmanager.amazonaws.com",
            "eventName": "CreateSecret",
            "requestParameters": {"name": name},
        }
        self._publish({"source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail", "detail": detail})

    def _publish(self, event: dict[str, Any]) -> None:
        event["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._sns.publish(TopicArn=self._topic, Message=json.dumps(event))
        self.published += 1


def drive(
    proxy: Any,
    moto: Any,
    phases: list[tuple[str, float, float]],
    t0: float,
    end: float,
    pool: list[tuple[str, str]],
    create_every: float,
    announce: Announcer | None = None,
) -> tuple[list[tuple[float, str, str, int]], list[tuple[float, str, str]], float | None, int]:
    """Switch the phases, rotate a secret a second and create the `pool` one every `create_every`:
    (rotations, creations, time of the final recovery, ListSecrets calls proxy.observe() made)."""
    rng = random.Random(1)
    versions = dict.fromkeys(PRESENT, 1)
    rotations: list[tuple[float, str, str, int]] = []  # (monotonic time before the call, kind, key, version)
    creations: list[tuple[float, str, str]] = []  # (monotonic time before the call, kind, key)
    pending = list(phases)
    recovery = None
    observed = 0
    next_rotation = t0 + ROTATE_EVERY
    next_creation = t0 + create_every / 2  # between rotations
    while (now := time.monotonic()) < end:
        if pending and t0 + pending[0][1] <= now:
            apply_phase(proxy, pending.pop(0)[0])
            if not pending:
                recovery = time.monotonic()
        elif now >= next_rotation:
            kind, key = rng.choice(PRESENT)
            versions[kind, key] += 1
            rotations.append((time.monotonic(), kind, key, versions[kind, key]))
            moto.put_secret_value(
                SecretId=PREFIX[kind] + key, SecretString=secret_value(kind, key, versions[kind, key])
            )
            observed += proxy.observe()
            if announce is not None:
                announce.rotated(PREFIX[kind] + key, len(rotations))
            next_rotation += ROTATE_EVERY
        elif len(creations) < len(pool) and now >= next_creation:
            # Those due now, then one snapshot for them all: a snapshot lists every secret, and with
            # --names there are thousands. A creation is found by name, whatever the listing's lag.
            while len(creations) < len(pool) and time.monotonic() >= next_creation:
                kind, key = pool[len(creations)]
                creations.append((time.monotonic(), kind, key))
                moto.create_secret(Name=PREFIX[kind] + key, SecretString=secret_value(kind, key, 1))
                if announce is not None:
                    announce.created(PREFIX[kind] + key, len(creations))
                next_creation += create_every
            observed += proxy.observe()
        else:
            upcoming = [end, next_rotation] + ([t0 + pending[0][1]] if pending else [])
            upcoming += [next_creation] if len(creations) < len(pool) else []
            time.sleep(max(0.0, min(upcoming) - now))
    return rotations, creations, recovery, observed


def collect(clients: list[subprocess.Popen[bytes]], tmp: Path) -> tuple[list[int], list[list[Any]]]:
    """Each client's exit code, and all their records."""
    codes, records = [], []
    for n, client in enumerate(clients):
        try:
            codes.append(client.wait(60))
        except subprocess.TimeoutExpired:
            client.kill()
            codes.append(client.wait())
        if codes[-1] != 0:
            print(f"client {n} exited {codes[-1]}:\n{tail_file(tmp / f'client{n}.log')}", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            records += json.loads((tmp / f"client{n}.json").read_text(encoding="utf-8"))
    return codes, records


def stop_daemon(daemon: subprocess.Popen[bytes], log: Any) -> tuple[int | str, list[str]]:
    """SIGTERM: its exit code, and its warning and error lines (which name no value: README, secrets in logs)."""
    daemon.send_signal(signal.SIGTERM)
    try:
        code: int | str = daemon.wait(30)
    except subprocess.TimeoutExpired:
        code = "no exit within 30 s of SIGTERM"
    if code != 0:
        print(tail(log), file=sys.stderr)
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").splitlines()
    return code, [line for line in lines if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]


def analyse(
    records: list[list[Any]],
    rotations: list[tuple[float, str, str, int]],
    creations: list[tuple[float, str, str]],
    pool: list[tuple[str, str]],
    phases: list[tuple[str, float, float]],
    t0: float,
    recovery: float | None,
) -> dict[str, Any]:
    never = set(ABSENT)
    pooled = set(pool)
    # Per key, (monotonic time the write started, version): a created key has none before its creation.
    history: dict[tuple[str, str], list[tuple[float, int]]] = {key: [(float("-inf"), 1)] for key in PRESENT}
    history.update((key, []) for key in pool)
    created_at = {(kind, key): when for when, kind, key in creations}
    for when, kind, key in creations:
        history[kind, key].append((when, 1))
    for when, kind, key, version in rotations:
        history[kind, key].append((when, version))

    def version_at(kind: str, key: str, t: float) -> int | None:
        """The latest version written (started) at or before `t`; None if the key did not exist yet."""
        return max((version for when, version in history[kind, key] if when <= t), default=None)

    def written_at(kind: str, key: str, version: int) -> float:
        return next(when for when, v in history[kind, key] if v == version)

    labels = [label_of(phases, i) for i in range(len(phases))]

    def phase_at(t: float) -> str:
        return next((labels[i] for i, (_, _, stop) in enumerate(phases) if t - t0 < stop), labels[-1])

    fresh_from = None if recovery is None else recovery + BOUND
    outcomes: Counter[str] = Counter()
    by_phase: dict[str, dict[str, Any]] = {}
    wrong: list[dict[str, Any]] = []
    undocumented: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    not_served: list[dict[str, Any]] = []
    checked = Counter[str]()  # answers each check looked at
    served_versions: set[tuple[str, str, int]] = set()
    asked_before: set[tuple[str, str]] = set()  # created keys asked for before their creation started
    served_after: set[tuple[str, str]] = set()  # created keys answered 200 in the checked window
    for kind, key, via, status, value, error, latency, done in records:
        label = str(status) if status in DOCUMENTED else "undocumented"
        outcomes[label] += 1
        # Latency and outcome go to the phase the request started in; the checks use completion.
        phase = by_phase.setdefault(phase_at(done - latency), {"latencies": [], "outcomes": Counter()})
        phase["latencies"].append(latency)
        phase["outcomes"][label] += 1
        where = {"kind": kind, "key": key, "via": via, "at_s": round(done - t0, 3), "phase": phase_at(done)}
        if label == "undocumented":
            undocumented.append({**where, "status": status, "error": error})
        if (kind, key) in never:
            checked["never_existing"] += 1
            if status == 200:
                wrong.append({**where, "why": "a key that never exists got a value"})
            continue
        newest = version_at(kind, key, done)  # None: a created key, not created (yet) when answered
        if (kind, key) in pooled:
            if newest is None:
                checked["created_before_creation"] += 1
                asked_before.add((kind, key))
            when = created_at.get((kind, key))
            if when is not None and fresh_from is not None and done >= max(when + CREATED_BOUND, fresh_from):
                checked["created_within_bound"] += 1
                if status == 200:
                    served_after.add((kind, key))
                else:
                    why = f"created secret not served within the bound: {status}, {done - when:.1f} s after creation"
                    not_served.append({**where, "status": status, "why": why, "after_s": round(done - when, 3)})
        elif status == 404:
            wrong.append({**where, "why": "a present key answered not found"})
        if status != 200:
            continue
        checked["values"] += 1
        got = version_of(kind, key, value)
        if got is None:
            wrong.append({**where, "why": f"not a value of this key ({len(value)} characters)"})
        elif newest is None:
            wrong.append({**where, "why": "a value before the key's creation started"})
        elif got > newest:
            wrong.append({**where, "why": f"version {got}, but only up to {newest} was written before the answer"})
        else:
            served_versions.add((kind, key, got))
            if fresh_from is not None and done >= fresh_from:
                checked["freshness"] += 1
                due = version_at(kind, key, done - BOUND)
                if due is not None and got < due:
                    lag = done - written_at(kind, key, due)
                    why = f"version {got}, but {due} was written {lag:.1f} s before (more than B = {BOUND:g} s)"
                    stale.append({**where, "why": why, "lag_s": round(lag, 3)})

    failures = []
    if not records:
        failures.append("no lookups were answered")
    if wrong:
        failures.append(f"{len(wrong)} wrong values, first: {wrong[0]}")
    if undocumented:
        failures.append(f"{len(undocumented)} undocumented statuses, first: {undocumented[0]}")
    if stale:
        failures.append(
            f"{len(stale)} answers older than B = {BOUND:g} s after the final recovery, on {len(by_key(stale))} "
            f"keys, up to {max(x['lag_s'] for x in stale):.1f} s after the newer version was written; "
            f"first: {stale[0]}"
        )
    if not_served:
        failures.append(
            f"{len(not_served)} answers for created secrets not 200 within the bound (creation + "
            f"{CREATED_BOUND:g} s, after recovery + {BOUND:g} s), on {len(by_key(not_served))} keys, up to "
            f"{max(x['after_s'] for x in not_served):.1f} s after creation; first: {not_served[0]}"
        )
    if recovery is None or checked["freshness"] == 0:
        failures.append(f"no answer completed after the final recovery + B = {BOUND:g} s: freshness was not checked")
    if not any(when < (recovery or 0) for when, *_ in rotations):
        failures.append("no rotation before the final recovery: freshness after an outage was not checked")
    if not creations or checked["created_within_bound"] == 0:
        failures.append("no answer for a created key within the bound: creations were not checked")
    latency = {}
    for kind, data in by_phase.items():
        ms = sorted(1000 * x for x in data["latencies"])
        latency[kind] = {
            "lookups": len(ms),
            "outcomes": dict(data["outcomes"]),
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        }
    return {
        "lookups": len(records),
        "outcomes": dict(outcomes),
        "wrong_values": len(wrong),
        "wrong_examples": wrong[:20],
        "undocumented_statuses": len(undocumented),
        "undocumented_examples": undocumented[:20],
        "stale_after_recovery": len(stale),
        "stale_after_recovery_by_key": by_key(stale),
        "stale_after_recovery_max_lag_s": max((x["lag_s"] for x in stale), default=None),
        "stale_after_recovery_via": dict(Counter(x["via"] for x in stale)),
        "stale_examples": stale[:20],
        "created_not_served": len(not_served),
        "created_not_served_by_key": by_key(not_served),
        "created_not_served_max_after_s": max((x["after_s"] for x in not_served), default=None),
        "created_not_served_examples": not_served[:20],
        "answers_checked": {
            "values_of_200s": checked["values"],
            "never_existing_keys": checked["never_existing"],
            "created_keys_before_creation": checked["created_before_creation"],
            "freshness_after_recovery": checked["freshness"],
            "created_keys_within_bound": checked["created_within_bound"],
        },
        "answers_checked_for_freshness": checked["freshness"],
        "rotations": len(rotations),
        "rotations_before_recovery": sum(1 for when, *_ in rotations if recovery and when < recovery),
        "rotations_served": sum(1 for _, kind, key, version in rotations if (kind, key, version) in served_versions),
        "creations": len(creations),
        "creations_before_recovery": sum(1 for when, *_ in creations if recovery and when < recovery),
        "created_keys_asked_before_creation": len(asked_before),
        "created_keys_served_within_bound": len(served_after),
        "created_keys_asked_before_then_served": len(asked_before & served_after),
        "recovery_at_s": None if recovery is None else recovery - t0,
        "latency_by_phase": latency,
        "failures": failures,
    }


def memory(
    sampler: Sampler, t0: float, end: float, creations: list[tuple[float, str, str]]
) -> tuple[dict[str, Any], list[str]]:
    """The daemon's RSS and fds per phase: warming (the first minute, or quarter of a shorter run),
    then the rest, split into creating and after creations when creations stop CALM_MIN or more
    before the end. A phase starts at the largest sample in the WINDOW seconds before it (the first
    sample for warming) and ends at the smallest in its last WINDOW seconds: a connection open for a
    moment cannot fail a check, a leak shows in every sample. After warming, a phase's RSS may grow
    by the noise and NAME_KIB for each name created in it at most."""
    warm = t0 + min(WARMING, (end - t0) / 4)
    stop = creations[-1][0] if creations else t0
    phases = [("warming", t0, warm), ("rest", warm, end)]
    if end - stop >= CALM_MIN and stop > warm:
        phases[1:] = [("creating", warm, stop), ("after creations", stop, end)]
    report: dict[str, Any] = {"phases": [], "samples": [s[:3] for s in sampler.samples]}
    failures = []
    for name, start, stop_at in phases:
        first = sampler.pick(start - WINDOW, start, max) if start > t0 else sampler.pick(t0, t0 + WINDOW, min)
        last = sampler.pick(stop_at - WINDOW, stop_at, min)
        inside = [(t, rss) for t, rss, _, _ in sampler.samples if start <= t <= stop_at]
        names = sum(1 for when, _, _ in creations if start < when <= stop_at)
        allowed = RSS_NOISE + NAME_KIB * names
        if first is None or last is None or len(inside) < 2:
            failures.append(f"no RSS / fd samples at the start or the end of the daemon's {name} phase")
            continue
        report["phases"].append(
            {
                "phase": name,
                "start_s": round(start - t0, 1),
                "end_s": round(stop_at - t0, 1),
                "rss_kib": [first[0], last[0]],
                "rss_max_kib": max(rss for _, rss in inside),
                "rss_kib_per_minute": round(60 * slope(inside), 1),
                "names_created": names,
                "rss_allowed_kib": allowed,
                "fds": [first[1], last[1]],
                "fds_by_kind": [first[2], last[2]],
            }
        )
        if name == "warming":
            continue
        if last[0] > first[0] + allowed:
            failures.append(
                f"daemon RSS went from {first[0]} KiB to {last[0]} in its {name} phase: more than +{RSS_NOISE} "
                f"and {NAME_KIB} a name created ({names})"
            )
        before, after = (fds - kinds.get("AWS", 0) for _, fds, kinds in (first, last))
        if after > before + FD_SLACK:
            failures.append(f"daemon fds other than AWS's went from {before} to {after} in its {name} phase")
        if last[2].get("AWS", 0) > AWS_POOL:
            failures.append(
                f"daemon holds {last[2]['AWS']} connections to AWS at the end of its {name} phase, "
                f"more than its pools ({AWS_POOL})"
            )
    report["samples"] = [(round(t - t0, 2), rss, fds) for t, rss, fds in report["samples"]]
    return report, failures


def slope(points: list[tuple[float, int]]) -> float:
    """Least squares: the change per second of the values in `points` (time, value)."""
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else 0.0


def label_of(phases: list[tuple[str, float, float]], index: int) -> str:
    """A phase's kind; the first and the last (both normal) say which they are."""
    return {0: "normal (warm-up)", len(phases) - 1: "normal (recovered)"}.get(index, phases[index][0])


def by_key(answers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per key: how many answers, and the completion times (s) of the first and the last."""
    keys: dict[str, dict[str, Any]] = {}
    for answer in answers:
        entry = keys.setdefault(f"{answer['kind']}/{answer['key']}", {"answers": 0, "first_at_s": answer["at_s"]})
        entry["answers"] += 1
        entry["last_at_s"] = answer["at_s"]
    return keys


def markdown(report: dict[str, Any]) -> str:
    settings, outcomes, calls = report["settings"], report["outcomes"], report["aws_calls"]
    layer, minutes = calls["at_fault_layer"], calls["minutes"]
    recovery = report["recovery_at_s"]
    stale, log = report["stale_after_recovery"], report["daemon_log"]
    checked, late = report["answers_checked"], report["created_not_served"]
    bound, created_bound = settings["rotation_bound_s"], settings["creation_bound_s"]
    lines = [
        f"## Soak: {settings['seconds']:g} s, {settings['clients']} clients, TTL {settings['ttl']} s, "
        f"listing every {settings['list_interval']} s lagging {settings['list_lag_s']:g} s (B = {bound:g} s), "
        f"final recovery at {'-' if recovery is None else f'{recovery:.1f}'} s",
        "",
        "| | count |",
        "|---|---:|",
        f"| lookups | {report['lookups']:,} |",
        f"| 200 value | {outcomes.get('200', 0):,} |",
        f"| 404 not found | {outcomes.get('404', 0):,} |",
        f'| 503 (SidecarError "answered 503") | {outcomes.get("503", 0):,} |',
        f"| undocumented statuses | {report['undocumented_statuses']:,} |",
        f"| 200s checked for their value | {checked['values_of_200s']:,} |",
        f"| answers for keys that never exist | {checked['never_existing_keys']:,} |",
        f"| wrong values | {report['wrong_values']:,} |",
        f"| rotations (before recovery; served to some client) | {report['rotations']} "
        f"({report['rotations_before_recovery']}; {report['rotations_served']}) |",
        f"| answers checked for freshness after recovery + B | {checked['freshness_after_recovery']:,} |",
        f"| ... older than B | {stale:,}"
        + (
            f" (on {len(report['stale_after_recovery_by_key'])} keys, up to "
            f"{report['stale_after_recovery_max_lag_s']:.1f} s after the newer version was written; "
            f"{report['stale_after_recovery_via'].get('refresh', 0)} to refresh=true)"
            if stale
            else ""
        )
        + " |",
        f"| creations (before recovery) | {report['creations']} ({report['creations_before_recovery']}) |",
        f"| answers for created keys before their creation (keys) | "
        f"{checked['created_keys_before_creation']:,} ({report['created_keys_asked_before_creation']}) |",
        f"| answers for created keys after creation + {created_bound:g} s and recovery + B (keys; "
        f"of them asked before creation) | {checked['created_keys_within_bound']:,} "
        f"({report['created_keys_served_within_bound']}; {report['created_keys_asked_before_then_served']}) |",
        f"| ... not served (created secret not served within the bound) | {late:,}"
        + (
            f" (on {len(report['created_not_served_by_key'])} keys, up to "
            f"{report['created_not_served_max_after_s']:.1f} s after creation)"
            if late
            else ""
        )
        + " |",
        f"| daemon log: warnings, errors | {log['warnings']}, {log['errors']} |",
        f"| daemon exit code on SIGTERM | {report['daemon_exit_code']} |",
        "",
        "| phase kind | seconds | lookups | 200 | 404 | 503 | other | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seconds = Counter[str]()
    for phase in report["phases"]:
        seconds[phase["label"]] += phase["end_s"] - phase["start_s"]
    for kind in seconds:
        data = report["latency_by_phase"].get(kind, {"lookups": 0, "outcomes": {}})  # none started in it
        counts = [data["outcomes"].get(label, 0) for label in ("200", "404", "503", "undocumented")]
        cells = [f"{seconds[kind]:.1f}", f"{data['lookups']:,}", *(f"{c:,}" for c in counts)]
        cells += [f"{data[p]:.2f}" if p in data else "-" for p in ("p50_ms", "p99_ms")]
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    lines += [
        "",
        "| AWS calls per minute | all | " + " | ".join(APIS) + " |",
        "|---|---:|" + "---:|" * len(APIS),
        *(
            f"| {where} | {sum(counts.values()) / minutes:.0f} | "
            + " | ".join(f"{counts.get(api, 0) / minutes:.0f}" for api in APIS)
            + " |"
            for where, counts in (("at the fault layer", layer), ("at moto", calls["at_moto"]))
        ),
        "",
        "| daemon | seconds | names created | RSS KiB: start → end (largest; allowed growth) | KiB a minute "
        "| open fds (clients, AWS, other): start → end |",
        "|---|---|---:|---:|---:|---|",
        *(memory_row(phase) for phase in report["daemon_resources"]["phases"]),
    ]
    return "\n".join(lines)


def memory_row(phase: dict[str, Any]) -> str:
    """A memory phase, its fds by kind: clients, AWS, the rest (listening socket, log, pipes, epoll)."""
    kinds = [
        f"{sum(k.values())} ({k.get('clients', 0)}, {k.get('AWS', 0)}, "
        f"{sum(n for kind, n in k.items() if kind not in ('clients', 'AWS'))})"
        for k in phase["fds_by_kind"]
    ]
    rss, rss_max, rate = phase["rss_kib"], phase["rss_max_kib"], phase["rss_kib_per_minute"]
    allowed = "" if phase["phase"] == "warming" else f"; +{phase['rss_allowed_kib']:,}"
    return (
        f"| {phase['phase']} | {phase['start_s']:g}-{phase['end_s']:g} | {phase['names_created']:,} "
        f"| {rss[0]:,} → {rss[1]:,} ({rss_max:,}{allowed}) | {rate:+,.0f} | {kinds[0]} → {kinds[1]} |"
    )


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def tail(log: Any) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-4000:]


def tail_file(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")[-4000:]
    return ""


def progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run (default 60, at least 20)")
    parser.add_argument("--clients", type=int, default=4, help="Airflow-like client processes (default 4)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"JSON report (default {DEFAULT_JSON})")
    parser.add_argument(
        "--names",
        type=int,
        help="create this many secrets through the first half of the run (default: one a second throughout)",
    )
    parser.add_argument("--events", action="store_true", help="the daemon hears change events too (some lost)")
    parser.add_argument(
        "--trace-memory",
        type=Path,
        metavar="DIR",
        help=f"diagnostics: run the daemon under tracemalloc, a snapshot into DIR every {TRACE_EVERY} s "
        "(tests/benchmarks/memory_trace.py)",
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one client with this config
    args = parser.parse_args(argv)
    if args.client:
        return run_client(args.client)
    if args.names is not None and args.names < 1:
        parser.error(f"--names: at least 1, not {args.names}")
    if args.events:
        use_events()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
