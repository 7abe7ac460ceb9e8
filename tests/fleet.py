"""`make fleet`: a fleet of daemons on one simulated clock against AWS's per-API quotas.

    .venv/bin/python -m tests.fleet [--quick] [--output PATH]

Each pod is the project's own `Daemon` (cache, catalog, resolver, the Secrets Manager source with
its pacing and fallbacks, the warm-up, listing and refresh loops), assembled over the simulation's
AWS client (`Daemon.assemble`) and serving no HTTP: the simulation asks its resolver as the HTTP
handler does, within `SIDECAR_REQUEST_TIMEOUT`. Its AWS client is a
`FakeSecretsManager` shared by the whole fleet, which answers from a dict after 20 ms and enforces
each API's account-wide quota with a token bucket (a second's worth of burst), answering
`ThrottlingException` beyond it, as AWS does. Each client retries a throttled call as botocore's
standard mode does (3 attempts, jittered exponential back-off), except on the APIs the daemon
tells botocore not to retry when throttled (`NOT_RETRIED_WHEN_THROTTLED`); botocore's adaptive
client-side limiter is not modelled, which can only overstate the calls. Every secret stays on
one version (`VERSION`).

Time is simulated: an asyncio event loop whose clock jumps to its next timer whenever nothing is
ready, so an hour of a thousand daemons takes seconds. Scenarios (`SCENARIOS`): a thousand pods
starting at once; a rolling restart of 500 pods over 60 s; steady state (an hour, counted for a
day); a thousand KubernetesExecutor task pods an hour. Reported per scenario: time until every
pod serves (ready, warm or lazily) and until every pod is warm, lookups that failed (a 503 to
Airflow) or answered wrong, throttled calls, peak calls/s per API against its quota, calls per
day and dollars a month. Wrong answers fail the run; nothing else does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import selectors
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from sidecar.daemon.events.queue import HEARTBEAT_EVERY, LONG_POLL
from sidecar.daemon.lifecycle import Daemon
from sidecar.daemon.settings import DEFAULTS as SETTINGS_DEFAULTS
from sidecar.daemon.sources.aws import NOT_RETRIED_WHEN_THROTTLED
from sidecar.daemon.sources.base import UpstreamError
from sidecar.daemon.sources.quotas import QUOTAS
from tests.benchmarks.report import table
from tests.support import make_settings, resolved

LATENCY = 0.020  # seconds AWS takes to answer a call
PRICE_PER_10K = 0.05  # USD per 10,000 Secrets Manager API calls
SQS_PRICE_PER_MILLION = 0.40  # USD per million SQS requests (standard queues, past the free tier)
ATTEMPTS = 3  # botocore's total_max_attempts, as the daemon configures it
VARIABLES = "airflow/variables/"
VERSION = "version-1"  # every secret's AWSCURRENT
DEFAULT_OUTPUT = Path(__file__).with_name("benchmarks") / "results" / "fleet.json"


# --- simulated time ---


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real file descriptors without waiting; a wait for a timer moves the clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("the simulation stalled: every task waits and no timer is set")
            self.now += timeout
        return ready


class SimulatedLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def run_simulated(coroutine: Coroutine[Any, Any, Any]) -> Any:
    loop = SimulatedLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


# --- AWS ---


class _Bucket:
    """AWS's side of a quota: `rate` requests a second, a second's worth at once, refused beyond."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = 0.0

    def take(self, now: float) -> bool:
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass
class Traffic:
    """What reached AWS, per API and per simulated second."""

    attempts: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    throttled: Counter[str] = field(default_factory=Counter)

    def peak(self, api: str) -> int:
        return max(self.attempts[api].values(), default=0)

    def total(self, api: str) -> int:
        return sum(self.attempts[api].values())


class FakeSecretsManager:
    """The account's secrets and quotas, shared by every pod."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.names = sorted(secrets)
        self.traffic = Traffic()
        buckets = {quota: _Bucket(rate) for quota, rate in QUOTAS.values()}
        self._buckets = {api: buckets[quota] for api, (quota, _) in QUOTAS.items()}

    def client(self, rng: random.Random) -> FakeClient:
        return FakeClient(self, rng)

    def admit(self, api: str) -> bool:
        now = asyncio.get_running_loop().time()
        self.traffic.attempts[api][int(now)] += 1
        if self._buckets[api].take(now):
            return True
        self.traffic.throttled[api] += 1
        return False


def _client_error(code: str, api: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "simulated"}, "ResponseMetadata": {"HTTPStatusCode": status}}, api
    )


class FakeClient:
    """One pod's client: the three calls the Secrets Manager source makes, with botocore's retries."""

    def __init__(self, store: FakeSecretsManager, rng: random.Random) -> None:
        self._store = store
        self._rng = rng

    async def _call(self, api: str, answer: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        attempts = 1 if api in NOT_RETRIED_WHEN_THROTTLED else ATTEMPTS
        for attempt in range(attempts):
            admitted = self._store.admit(api)
            await asyncio.sleep(LATENCY)
            if admitted:
                return answer()
            if attempt + 1 < attempts:
                await asyncio.sleep(self._rng.random() * 2**attempt)  # botocore's standard back-off
        raise _client_error("ThrottlingException", api)

    async def get_secret_value(self, SecretId: str, VersionStage: str = "AWSCURRENT") -> dict[str, Any]:
        def answer() -> dict[str, Any]:  # AWS's argument names
            if SecretId not in self._store.secrets:
                raise _client_error("ResourceNotFoundException", "GetSecretValue")
            return {"Name": SecretId, "SecretString": self._store.secrets[SecretId], "VersionId": VERSION}

        return await self._call("GetSecretValue", answer)

    async def list_secrets(
        self, Filters: list[dict[str, Any]], MaxResults: int, NextToken: str = "0"
    ) -> dict[str, Any]:
        prefixes = tuple(Filters[0]["Values"])  # a name matches if any value is a prefix of it

        def answer() -> dict[str, Any]:
            names = [n for n in self._store.names if n.startswith(prefixes)]
            start = int(NextToken)
            page = names[start : start + MaxResults]
            more = start + MaxResults < len(names)
            return {
                "SecretList": [{"Name": n, "SecretVersionsToStages": {VERSION: ["AWSCURRENT"]}} for n in page],
                **({"NextToken": str(start + MaxResults)} if more else {}),
            }

        return await self._call("ListSecrets", answer)

    async def batch_get_secret_value(self, SecretIdList: list[str]) -> dict[str, Any]:
        def answer() -> dict[str, Any]:
            secrets = self._store.secrets
            return {
                "SecretValues": [
                    {"Name": n, "SecretString": secrets[n], "VersionId": VERSION} for n in SecretIdList if n in secrets
                ],
                "Errors": [
                    {"SecretId": n, "ErrorCode": "ResourceNotFoundException", "Message": "simulated"}
                    for n in SecretIdList
                    if n not in secrets
                ],
            }

        return await self._call("BatchGetSecretValue", answer)


# --- pods ---


@dataclass
class Outcome:
    lookups: int = 0
    failed: int = 0
    wrong: int = 0
    first_failures: list[str] = field(default_factory=list)


class Pod:
    """One daemon and the Airflow processes beside it, which read `keys` every `every` seconds."""

    def __init__(self, store: FakeSecretsManager, settings: dict[str, str], rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        self.daemon = Daemon(make_settings("http://aws.simulated", **settings), timer=loop.time, jitter=rng.uniform)
        self.started_at = loop.time()
        self.ready_at: float | None = None
        self.warm_at: float | None = None
        self.answered_at: float | None = None  # a task pod's: its reads all answered
        self._store = store
        self._rng = rng
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """The daemon's parts over this pod's client of the shared store, and its loops; no HTTP."""
        await self.daemon.assemble(client=self._store.client(self._rng))
        self.daemon.run_background()

    def read(self, keys: list[str], every: float, outcome: Outcome) -> None:
        self._readers.append(asyncio.ensure_future(self._read(keys, every, outcome)))

    async def read_once(self, keys: list[str], outcome: Outcome) -> None:
        for key in keys:
            await self._lookup(key, outcome)

    async def _read(self, keys: list[str], every: float, outcome: Outcome) -> None:
        await asyncio.sleep(self._rng.uniform(0, every))
        while True:
            await self.read_once(keys, outcome)
            await asyncio.sleep(every)

    async def _lookup(self, key: str, outcome: Outcome) -> None:
        outcome.lookups += 1
        daemon = self.daemon
        try:
            value, _ = await asyncio.wait_for(
                resolved(daemon.resolver, "variables", key), daemon.settings.request_timeout
            )
        except (UpstreamError, asyncio.TimeoutError) as error:
            outcome.failed += 1
            if len(outcome.first_failures) < 5:
                outcome.first_failures.append(f"{key}: {getattr(error, 'code', type(error).__name__)}")
            return
        if value != self._store.secrets.get(VARIABLES + key):
            outcome.wrong += 1

    def note_readiness(self, now: float) -> None:
        readiness = self.daemon.warmup.readiness
        if self.ready_at is None and readiness.ready:
            self.ready_at = now
        if self.warm_at is None and readiness.ready and not readiness.lazy:
            self.warm_at = now

    async def stop(self) -> None:
        self.note_readiness(asyncio.get_running_loop().time())
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self.daemon.stop()


class Fleet:
    """The pods alive, watched once a simulated second."""

    def __init__(self, store: FakeSecretsManager, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.pods: list[Pod] = []
        self._watcher: asyncio.Task[None] | None = None

    async def start_pod(self, settings: dict[str, str]) -> Pod:
        pod = Pod(self.store, settings, random.Random(self.rng.random()))
        self.pods.append(pod)
        await pod.start()
        pod.note_readiness(asyncio.get_running_loop().time())
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())
        return pod

    async def stop_pod(self, pod: Pod) -> None:
        self.pods.remove(pod)
        await pod.stop()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for pod in self.pods:
                pod.note_readiness(loop.time())
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.gather(*(pod.stop() for pod in self.pods))


# --- scenarios ---


@dataclass(frozen=True)
class Size:
    pods: int
    secrets: int
    reads: int  # variables each long-lived pod's Airflow reads, every minute
    steady_hours: float
    task_pods_per_hour: int
    nodes: int  # that run the task pods


FULL = Size(pods=1000, secrets=300, reads=5, steady_hours=1.0, task_pods_per_hour=1000, nodes=20)
QUICK = Size(pods=60, secrets=100, reads=3, steady_hours=0.25, task_pods_per_hour=120, nodes=4)


def _secrets(size: Size) -> dict[str, str]:
    return {f"{VARIABLES}key_{n}": f"value {n}" for n in range(size.secrets)}


def _keys(rng: random.Random, size: Size, count: int) -> list[str]:
    """`count` keys a pod reads: present ones, and one that does not exist."""
    return [f"key_{rng.randrange(size.secrets)}" for _ in range(count - 1)] + [f"absent_{rng.randrange(1000)}"]


def _after(pods: list[Pod], moment: Callable[[Pod], float | None]) -> float | None:
    """Seconds from a pod's start to `moment`, for the slowest of `pods`; None if one never got there."""
    times = [moment(pod) for pod in pods]
    if not pods or any(t is None for t in times):
        return None
    return max(t - pod.started_at for t, pod in zip(times, pods, strict=True))  # type: ignore[operator]


def _report(
    name: str,
    settings: dict[str, str],
    store: FakeSecretsManager,
    outcome: Outcome,
    seconds: float,
    started: list[Pod],
    daily: bool = False,
) -> dict[str, Any]:
    """`started`: the pods whose start the scenario is about (none for the steady state); `daily`:
    the simulated stretch repeats all day, so its calls are counted for a day and priced."""
    traffic = store.traffic
    calls = {api: traffic.total(api) for api in sorted(traffic.attempts)}
    calls_per_day = sum(calls.values()) * 86400 / seconds if daily else None
    return {
        "scenario": name,
        "settings": settings,
        "pods_started": len(started),
        "simulated_s": seconds,
        "all_serving_after_s": _after(started, lambda pod: pod.ready_at),
        "all_warm_after_s": _after(started, lambda pod: pod.warm_at),
        "all_tasks_answered_after_s": _after(started, lambda pod: pod.answered_at),
        "lookups": outcome.lookups,
        "failed_lookups": outcome.failed,
        "wrong_answers": outcome.wrong,
        "first_failures": outcome.first_failures,
        "throttled": dict(sorted(traffic.throttled.items())),
        "peak_per_s": {api: traffic.peak(api) for api in calls},
        "quota_per_s": {api: QUOTAS[api][1] for api in calls},
        "calls": calls,
        "calls_total": sum(calls.values()),
        "calls_per_day": calls_per_day,
        "usd_per_month": None if calls_per_day is None else calls_per_day * 30 / 10_000 * PRICE_PER_10K,
    }


def jitter_for(pods: int, size: Size) -> int:
    """The README's sizing rule: spread the warm-ups so that their BatchGetSecretValue calls
    (one per 20 secrets) average a fifth of the account's 100/s, leaving room for bursts."""
    return math.ceil(pods * math.ceil(size.secrets / 20) / 20)


def _sized(settings: dict[str, str], pods: int, size: Size) -> dict[str, str]:
    if settings.get("warmup_jitter") != "sized":
        return settings
    return {**settings, "warmup_jitter": str(jitter_for(pods, size))}


async def start_at_once(size: Size, settings: dict[str, str], minutes: float = 15) -> dict[str, Any]:
    """Every pod starts at t=0 (a node pool replaced); their Airflow reads from the first minute."""
    settings = _sized(settings, size.pods, size)
    store = FakeSecretsManager(_secrets(size))
    fleet = Fleet(store, seed=1)
    outcome = Outcome()
    pods = await asyncio.gather(*(fleet.start_pod(settings) for _ in range(size.pods)))
    for pod in pods:
        pod.read(_keys(fleet.rng, size, size.reads), 60.0, outcome)
    await asyncio.sleep(minutes * 60)
    await fleet.close()
    return _report(f"{size.pods:,} pods start at once", settings, store, outcome, minutes * 60, pods)


async def rolling_restart(size: Size, settings: dict[str, str], over: float = 60.0) -> dict[str, Any]:
    """Half the fleet, warm for ten minutes, is replaced pod by pod within `over` seconds."""
    count = size.pods // 2
    settings = _sized(settings, count, size)
    settle = jitter_for(count, size) + 300.0
    store = FakeSecretsManager(_secrets(size))
    fleet = Fleet(store, seed=2)
    before = Outcome()
    spread = _sized(SPREAD, count, size)  # the old pods started as a fleet should
    for pod in await asyncio.gather(*(fleet.start_pod(spread) for _ in range(count))):
        pod.read(_keys(fleet.rng, size, size.reads), 60.0, before)
    await asyncio.sleep(settle)
    store.traffic = Traffic()
    outcome = Outcome()
    new: list[Pod] = []

    async def replace(old: Pod, delay: float) -> None:
        await asyncio.sleep(delay)
        await fleet.stop_pod(old)
        pod = await fleet.start_pod(settings)
        pod.read(_keys(fleet.rng, size, size.reads), 60.0, outcome)
        new.append(pod)

    await asyncio.gather(*(replace(pod, n * over / count) for n, pod in enumerate(list(fleet.pods))))
    await asyncio.sleep(settle - over)
    await fleet.close()
    result = _report(f"rolling restart of {count:,} pods over {over:.0f} s", settings, store, outcome, settle, new)
    result["failed_lookups"] += before.failed
    result["wrong_answers"] += before.wrong
    return result


async def steady(size: Size, settings: dict[str, str]) -> dict[str, Any]:
    """The fleet after its start: `steady_hours` counted, scaled to a day. With PUSH's settings,
    the same fleet with change events on: see `push_costs`."""
    store = FakeSecretsManager(_secrets(size))
    fleet = Fleet(store, seed=3)
    outcome = Outcome()
    spread = {**settings, **_sized(SPREAD, size.pods, size)}
    pods = await asyncio.gather(*(fleet.start_pod(spread) for _ in range(size.pods)))
    for pod in pods:
        pod.read(_keys(fleet.rng, size, size.reads), 60.0, outcome)
    await asyncio.sleep(jitter_for(size.pods, size) + 300.0)  # past the start
    store.traffic = Traffic()
    counted = Outcome()
    for pod in pods:
        pod.read(_keys(fleet.rng, size, size.reads), 60.0, counted)
    seconds = size.steady_hours * 3600
    await asyncio.sleep(seconds)
    await fleet.close()
    name = f"steady state, {size.pods:,} pods" + (", events on" if settings is PUSH else "")
    result = _report(name, settings, store, counted, seconds, [], daily=True)
    result["pods"] = size.pods
    result["failed_lookups"] += outcome.failed
    result["wrong_answers"] += outcome.wrong
    return result


async def task_pods(size: Size, settings: dict[str, str], hours: float = 1.0) -> dict[str, Any]:
    """KubernetesExecutor: a pod per task, evenly spread, each reading 3 variables then gone."""
    store = FakeSecretsManager(_secrets(size))
    fleet = Fleet(store, seed=4)
    outcome = Outcome()
    count = int(size.task_pods_per_hour * hours)
    pods: list[Pod] = []

    async def one_task(delay: float) -> None:
        await asyncio.sleep(delay)
        pod = await fleet.start_pod(settings)
        pods.append(pod)
        await pod.read_once(_keys(fleet.rng, size, 3), outcome)
        pod.answered_at = asyncio.get_running_loop().time()
        await fleet.stop_pod(pod)

    await asyncio.gather(*(one_task(n * hours * 3600 / count) for n in range(count)))
    await fleet.close()
    name = f"{size.task_pods_per_hour:,} task pods an hour, 3 reads each"
    return _report(name, settings, store, outcome, hours * 3600, pods, daily=True)


async def task_pods_on_node_daemons(size: Size, settings: dict[str, str], hours: float = 1.0) -> dict[str, Any]:
    """The same task pods, each asking a long-lived daemon on its node (a DaemonSet) instead."""
    store = FakeSecretsManager(_secrets(size))
    fleet = Fleet(store, seed=5)
    spread = {**settings, **_sized(SPREAD, size.nodes, size)}
    daemons = await asyncio.gather(*(fleet.start_pod(spread) for _ in range(size.nodes)))
    await asyncio.sleep(jitter_for(size.nodes, size) + 300.0)  # the nodes were up before the hour counted
    store.traffic = Traffic()
    outcome = Outcome()
    count = int(size.task_pods_per_hour * hours)

    async def one_task(delay: float) -> None:
        await asyncio.sleep(delay)
        await fleet.rng.choice(daemons).read_once(_keys(fleet.rng, size, 3), outcome)

    await asyncio.gather(*(one_task(n * hours * 3600 / count) for n in range(count)))
    await fleet.close()
    name = f"{size.task_pods_per_hour:,} task pods an hour on {size.nodes} node daemons"
    return _report(name, settings, store, outcome, hours * 3600, [], daily=True)


DEFAULTS: dict[str, str] = {}
# Change events on (SIDECAR_EVENTS=sns): while they arrive the listing runs every
# SIDECAR_EVENTS_LIST_INTERVAL, and misses keep their default life (twice SIDECAR_LIST_INTERVAL).
PUSH = {
    "list_interval": f"{SETTINGS_DEFAULTS['events_list_interval']:g}",
    "negative_ttl": f"{2 * SETTINGS_DEFAULTS['list_interval']:g}",
}
WARMUP_OFF = {"warmup": "false"}
SPREAD = {"warmup_jitter": "sized"}  # by `jitter_for`, for the pods that start together

SCENARIOS: list[tuple[Callable[..., Coroutine[Any, Any, dict[str, Any]]], dict[str, str]]] = [
    (start_at_once, DEFAULTS),
    (start_at_once, SPREAD),
    (rolling_restart, DEFAULTS),
    (rolling_restart, SPREAD),
    (steady, DEFAULTS),
    (steady, PUSH),
    (task_pods, DEFAULTS),
    (task_pods, WARMUP_OFF),
    (task_pods_on_node_daemons, DEFAULTS),
]


def _one(size: Size, index: int) -> dict[str, Any]:
    logging.getLogger("sidecar").setLevel(logging.ERROR)  # a thousand daemons' warnings say nothing new
    scenario, settings = SCENARIOS[index]
    started = time.perf_counter()
    result = run_simulated(scenario(size, settings))
    result["wall_s"] = time.perf_counter() - started
    print(f"{result['scenario']} ({_settings_label(result['settings'])}): {result['wall_s']:.0f} s", flush=True)
    return result


def run(size: Size, workers: int = 2) -> list[dict[str, Any]]:
    """Every scenario, each in its own process (they share nothing), `workers` at a time."""
    order = sorted(range(len(SCENARIOS)), key=lambda index: SCENARIOS[index][0] is not steady)  # longest first
    with ProcessPoolExecutor(workers) as pool:
        found = dict(zip(order, pool.map(_one, [size] * len(order), order), strict=True))
    return [found[index] for index in range(len(SCENARIOS))]


def _settings_label(settings: dict[str, str]) -> str:
    return ", ".join(f"SIDECAR_{k.upper()}={v}" for k, v in settings.items()) or "defaults"


def render(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        ready = (
            r["all_tasks_answered_after_s"] if r["all_tasks_answered_after_s"] is not None else r["all_serving_after_s"]
        )
        rows.append(
            [
                r["scenario"],
                _settings_label(r["settings"]),
                _seconds(ready),
                _seconds(r["all_warm_after_s"]),
                f"{r['failed_lookups']:,} / {r['lookups']:,}",
                f"{sum(r['throttled'].values()):,}",
                ", ".join(f"{api} {r['peak_per_s'][api]:,}/{r['quota_per_s'][api]:,.0f}" for api in r["calls"]),
                f"{r['calls_total']:,}",
                "-" if r["calls_per_day"] is None else f"{r['calls_per_day']:,.0f}",
                "-" if r["usd_per_month"] is None else f"{r['usd_per_month']:,.2f}",
            ]
        )
    return table(
        "Fleet simulation (simulated time; a task pod's time is to its third answer)",
        [
            "scenario",
            "settings",
            "every pod serving",
            "every pod warm",
            "failed lookups",
            "throttled calls",
            "peak calls/s / quota",
            "AWS calls",
            "calls/day",
            "USD/month",
        ],
        rows,
        [
            "peak calls/s counts every attempt that reached AWS in a simulated second, throttled ones too; "
            "a quota allows a second's worth of burst",
            "AWS calls: in the simulated stretch (15 min from a start; a restart and 5 min past its warm-ups; "
            "the steady hour, the task pods' hour); calls/day and USD/month for what repeats all day, "
            f"at ${PRICE_PER_10K} per 10,000 calls",
        ],
    )


def push_costs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A day of the steady fleet with the listing alone (pull) and with change events (push),
    priced. The queues are not simulated: their requests follow from the consumer's loop, one long
    poll every LONG_POLL seconds and a heartbeat every HEARTBEAT_EVERY, per pod. A rotation costs
    both modes the same GetSecretValue per pod that holds the secret (at the next listing, or at the
    event), plus in push mode one early receive and one DeleteMessageBatch per pod: left out of both.
    SNS's deliveries to SQS and AWS's events on the default bus are free."""
    rows = []
    for result in results:
        if not result["scenario"].startswith("steady state"):
            continue
        push = result["settings"] == PUSH
        pods = result["pods"]
        sqs = pods * (86400 / LONG_POLL + 86400 / HEARTBEAT_EVERY) if push else 0.0
        store_usd = result["calls_per_day"] / 10_000 * PRICE_PER_10K
        rows.append(
            {
                "mode": "push (SIDECAR_EVENTS=sns)" if push else "pull (the listing alone)",
                "pods": pods,
                "secrets_manager_calls_per_day": result["calls_per_day"],
                "sqs_requests_per_day": sqs,
                "usd_per_day": store_usd + sqs / 1e6 * SQS_PRICE_PER_MILLION,
                "rotation_within_s": "event + 1 fetch" if push else "up to 635",
            }
        )
    return rows


def render_push(rows: list[dict[str, Any]]) -> str:
    return table(
        "Pull or push: a day of the steady fleet, priced",
        ["mode", "Secrets Manager calls/day", "SQS requests/day", "USD/day", "a rotation reaches Airflow"],
        [
            [
                r["mode"],
                f"{r['secrets_manager_calls_per_day']:,.0f}",
                f"{r['sqs_requests_per_day']:,.0f}",
                f"{r['usd_per_day']:,.2f}",
                r["rotation_within_s"],
            ]
            for r in rows
        ],
        [
            f"Secrets Manager ${PRICE_PER_10K} per 10,000 calls; SQS ${SQS_PRICE_PER_MILLION} per million requests, "
            f"long polls included (one per pod every {LONG_POLL} s, a heartbeat every {HEARTBEAT_EVERY:.0f} s)",
            "rotations cost both modes the same GetSecretValue per pod that holds the secret: left out of both",
        ],
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.pods} pods instead of {FULL.pods}")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else FULL)
    costs = push_costs(results)
    print(render(results))
    print(render_push(costs))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"scenarios": results, "pull_or_push": costs}, indent=2) + "\n", encoding="utf-8")
    wrong = sum(r["wrong_answers"] for r in results)
    print(f"figures written to {args.output}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
