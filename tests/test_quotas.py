"""AWS's per-API quotas: a daemon paces itself, and a throttled listing or batch API costs
readiness nothing (each key is looked up on demand through GetSecretValue meanwhile).

Throttling comes from the fault layer between the daemon and moto, as AWS would answer it."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from botocore.exceptions import ClientError

from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.lifecycle import Daemon
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources import secretsmanager
from sidecar.daemon.sources.base import UpstreamError
from sidecar.daemon.sources.configured import make_source
from sidecar.daemon.sources.quotas import QUOTAS, RateLimits, TokenBucket
from tests.support import FakeClock, make_settings, sample_value

DEADLINE = 30.0  # seconds any wait on a condition below may take before the test fails


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE:.0f}s")
        await asyncio.sleep(0.02)


async def _readyz(sidecar) -> tuple[int, dict]:
    async with sidecar.http.get(f"{sidecar.url}/readyz") as response:
        return response.status, await response.json()


def _paced(daemon: Daemon, api: str) -> float:
    return sample_value(daemon.metrics, "sidecar_upstream_paced_calls_total", {"api": api}) or 0.0


# --- the buckets, on a clock the test moves ---


def test_a_bucket_lets_a_seconds_worth_through_then_spaces_the_rest():
    bucket = TokenBucket(rate=4.0, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(4)] == [0.0] * 4
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.25, 0.5, 0.75]  # queued behind each other
    assert bucket.reserve(10.0) == 0.0  # refilled, never above a second's worth
    assert [bucket.reserve(10.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.25]


def test_a_slow_quota_still_lets_one_call_through_at_once():
    bucket = TokenBucket(rate=0.5, now=0.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 2.0


def test_each_api_gets_its_share_of_its_own_quota_and_parameter_store_reads_share_one():
    clock = FakeClock()
    limits = RateLimits(share=0.1, timer=clock)
    assert [limits.delay("ListSecrets") for _ in range(11)][-2:] == [0.0, 0.1]  # 10/s: a tenth of 100/s
    assert limits.delay("GetSecretValue") == 0.0  # another quota: untouched
    for _ in range(4):
        assert limits.delay("GetParametersByPath") == 0.0
    assert limits.delay("GetParameter") == 0.25  # one bucket of 4/s for the three read APIs
    assert limits.delay("STS:AssumeRole") == 0.0  # not ours to pace
    assert {quota for quota, _ in QUOTAS.values()} >= {"ListSecrets", "BatchGetSecretValue", "Parameter Store reads"}


@pytest.mark.parametrize("raw", ["0", "-0.1", "1.5", "nan", "a tenth"])
def test_a_quota_share_outside_0_to_1_is_a_clear_error(aws, raw):
    with pytest.raises(ConfigError, match="--aws-quota-share / SIDECAR_AWS_QUOTA_SHARE"):
        make_settings(aws, aws_quota_share=raw)


def test_a_negative_warm_up_jitter_is_a_clear_error(aws):
    with pytest.raises(ConfigError, match="--warmup-jitter / SIDECAR_WARMUP_JITTER"):
        make_settings(aws, warmup_jitter="-1")


# --- the daemon against the fault layer ---


async def test_a_daemon_paces_its_listing_within_its_share(aws, start_sidecar):
    for n in range(3):
        aws.put(f"airflow/variables/v{n}", "x")
    sidecar = await start_sidecar(aws_quota_share="0.02")  # ListSecrets: 2/s for this daemon

    await sidecar.daemon.warmup.warm_up()  # one ListSecrets for the three prefixes
    assert aws.calls["ListSecrets"] == 1
    for _ in range(2):
        await sidecar.daemon.catalog.refresh()

    assert aws.calls["ListSecrets"] == 3
    assert _paced(sidecar.daemon, "ListSecrets") == 1  # the third waited for its turn
    assert _paced(sidecar.daemon, "BatchGetSecretValue") == 0


async def test_a_throttled_listing_serves_lazily_at_once_and_warms_up_when_aws_lets_it(
    aws, proxy, start_sidecar, caplog
):
    aws.put("airflow/variables/v", "1")
    proxy.set("ListSecrets", "throttle")
    sidecar = await start_sidecar(backend_kwargs={"endpoint_url": proxy.endpoint}, warmup="true")
    warm_up = asyncio.ensure_future(sidecar.daemon.warmup.warm_up())
    try:
        with caplog.at_level(logging.WARNING, logger="sidecar"):
            await _until(lambda: _ready_lazily(sidecar), "lazy readiness while ListSecrets is throttled")
        status, body = await _readyz(sidecar)
        assert (status, body["status"], body["mode"]) == (200, "ready", "lazy")
        assert "ListSecrets is throttled (ThrottlingException)" in body["reason"]
        assert any("listing again later" in r.getMessage() for r in caplog.records)

        proxy.reset_counts()
        assert await sidecar.get("variables", "v") == (200, {"value": "1"}, "miss")
        assert (await sidecar.get("variables", "absent"))[0] == 404
        assert proxy.counts().get("GetSecretValue", 0) == 2  # on demand, one key at a time

        proxy.set("ListSecrets", "normal")
        await asyncio.wait_for(warm_up, DEADLINE)
    finally:
        warm_up.cancel()
    assert await _readyz(sidecar) == (200, {"status": "ready"})


async def test_a_throttled_listing_at_start_costs_one_call_then_waits_within_an_interval(aws, proxy):
    """botocore does not retry it: a fleet started together costs each daemon one throttled call,
    and each lists again at a random moment of the next interval, at a pace the quota takes."""
    proxy.set("ListSecrets", "throttle")
    asked: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        asked.append((low, high))
        return 3600.0  # the test ends long before

    settings = make_settings(aws, {"endpoint_url": proxy.endpoint}, list_interval=120)
    daemon = Daemon(settings, timer=FakeClock(), jitter=jitter)
    await daemon.open()
    warm_up = asyncio.ensure_future(daemon.warmup.warm_up())
    try:
        deadline = time.monotonic() + DEADLINE
        while not daemon.warmup.readiness.lazy:
            assert time.monotonic() < deadline, "no lazy readiness while ListSecrets is throttled"
            await asyncio.sleep(0.01)
        assert proxy.counts() == {"ListSecrets": 1}
        assert asked == [(0.0, 120.0)]
    finally:
        warm_up.cancel()
        await daemon.stop()


async def _ready_lazily(sidecar) -> bool:
    status, body = await _readyz(sidecar)
    return status == 200 and body.get("mode") == "lazy"


async def test_aws_down_at_start_still_holds_readiness(aws, proxy, start_sidecar):
    """Only throttling means AWS is there to answer GetSecretValue; a 5xx listing may mean it is not."""
    proxy.set("ListSecrets", "5xx")
    sidecar = await start_sidecar(backend_kwargs={"endpoint_url": proxy.endpoint}, warmup="true")
    warm_up = asyncio.ensure_future(sidecar.daemon.warmup.warm_up())
    try:
        await _until(lambda: _failed_listing_reported(sidecar), "readiness naming the failed listing")
        status, body = await _readyz(sidecar)
        assert (status, body["status"]) == (503, "not_ready")
        assert "ServiceUnavailableException" in body["reason"]
        assert proxy.counts().get("GetSecretValue", 0) == 0
        proxy.set("ListSecrets", "normal")
        await asyncio.wait_for(warm_up, DEADLINE)
    finally:
        warm_up.cancel()
    assert await _readyz(sidecar) == (200, {"status": "ready"})


async def _failed_listing_reported(sidecar) -> bool:
    return (await _readyz(sidecar))[1]["reason"] != "warming up"


async def test_a_throttled_batch_at_warm_up_leaves_each_value_to_its_first_use(aws, proxy, start_sidecar, caplog):
    """Warm-up wants values ahead of use: it does not trade 20 names per call for one call each."""
    for n in range(3):
        aws.put(f"airflow/variables/v{n}", f"value {n}")
    proxy.set("BatchGetSecretValue", "throttle")
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        sidecar = await start_sidecar(backend_kwargs={"endpoint_url": proxy.endpoint}, warm=True)
    assert proxy.counts().get("BatchGetSecretValue", 0) == 1  # not retried: the values wait for their use
    assert proxy.counts().get("GetSecretValue", 0) == 0
    assert any("BatchGetSecretValue is throttled" in r.getMessage() for r in caplog.records)
    assert await _readyz(sidecar) == (200, {"status": "ready"})  # listed: misses answered, values lazy

    proxy.reset_counts()
    assert await sidecar.get("variables", "v0") == (200, {"value": "value 0"}, "miss")
    assert (await sidecar.get("variables", "absent"))[0] == 404
    # The value asked for, and the absent name asked by name: a listing lags new secrets.
    assert proxy.counts() == {"GetSecretValue": 2}


async def test_a_refresh_while_batches_are_throttled_asks_for_each_name_instead(aws, proxy, start_sidecar):
    """Refresh-ahead wants names in use: GetSecretValue (10,000/s) for each, for a minute."""
    names = [f"airflow/variables/v{n}" for n in range(2)]
    for name in names:
        aws.put(name, "x")
    proxy.set("BatchGetSecretValue", "throttle")
    sidecar = await start_sidecar(backend_kwargs={"endpoint_url": proxy.endpoint})
    source = sidecar.daemon.source
    assert await source.get_many(names) == dict.fromkeys(names, "x")
    assert proxy.counts().get("GetSecretValue", 0) == 2

    proxy.reset_counts()  # within the minute: the throttled API is left alone
    assert await source.get_many(names) == dict.fromkeys(names, "x")
    assert proxy.counts() == {"GetSecretValue": 2}
    with pytest.raises(UpstreamError) as raised:  # and a warm-up waits for first uses instead
        await source.get_many(names, ahead=True)
    assert raised.value.throttled
    assert proxy.counts() == {"GetSecretValue": 2}


async def test_batches_come_back_once_the_pause_is_over(aws, proxy, start_sidecar, monkeypatch):
    aws.put("airflow/variables/v", "1")
    monkeypatch.setattr(secretsmanager, "BATCH_THROTTLED_FOR", 0.0)  # the minute, over at once
    proxy.set("BatchGetSecretValue", "throttle")
    sidecar = await start_sidecar(backend_kwargs={"endpoint_url": proxy.endpoint})
    source = sidecar.daemon.source
    assert await source.get_many(["airflow/variables/v"]) == {"airflow/variables/v": "1"}
    proxy.set("BatchGetSecretValue", "normal")
    proxy.reset_counts()

    assert await source.get_many(["airflow/variables/v"]) == {"airflow/variables/v": "1"}
    assert proxy.counts().get("BatchGetSecretValue", 0) == 1
    assert proxy.counts().get("GetSecretValue", 0) == 0


async def test_warm_up_jitter_serves_lazily_at_once_then_warms_up(aws):
    aws.put("airflow/variables/v", "1")
    settings = make_settings(aws, warmup_jitter="0.5")
    daemon = Daemon(settings, timer=FakeClock(), jitter=lambda low, high: (low + high) / 2)
    await daemon.start()
    try:
        assert daemon.warmup.readiness.lazy
        assert "SIDECAR_WARMUP_JITTER" in daemon.warmup.readiness.reason
        assert aws.calls["ListSecrets"] == 0  # not at start: a fleet's listings are spread out

        deadline = time.monotonic() + DEADLINE
        while daemon.warmup.readiness.lazy:
            assert time.monotonic() < deadline, "no warm-up after the jitter"
            await asyncio.sleep(0.02)
        assert aws.calls["ListSecrets"] == 1
    finally:
        await daemon.stop()


class _BatchesRefused:
    """An AWS client whose BatchGetSecretValue fails with `code`; counts GetSecretValue calls in flight."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.in_flight = 0
        self.most_in_flight = 0

    async def batch_get_secret_value(self, SecretIdList: list[str]) -> dict:  # AWS's argument names
        raise ClientError({"Error": {"Code": self.code}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "Batch")

    async def get_secret_value(self, SecretId: str, VersionStage: str = "AWSCURRENT") -> dict:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return {"Name": SecretId, "SecretString": "x"}


@pytest.mark.parametrize(("code", "at_once"), [("ThrottlingException", 1), ("AccessDeniedException", 20)])
async def test_while_batches_are_throttled_names_are_fetched_one_call_at_a_time(aws, code, at_once):
    """No burst of 20 into a throttling account (nor a pool of connections opened for it); when IAM
    refuses batches, AWS is not straining and the 20 go together."""
    client = _BatchesRefused(code)
    names = [f"airflow/variables/v{n}" for n in range(20)]
    source = make_source(make_settings(aws), Metrics(), client)
    assert await source.get_many(names) == dict.fromkeys(names, "x")
    assert client.most_in_flight == at_once
