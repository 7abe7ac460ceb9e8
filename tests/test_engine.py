"""The engine that makes AWS calls rare, through the whole daemon, counted where AWS is (moto)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tests.support import AwsEmulator, sample_value


async def test_300_concurrent_requests_for_a_cold_key_make_one_call(aws, start_sidecar):
    aws.put("airflow/variables/cold", "v")
    sidecar = await start_sidecar()

    answers = await asyncio.gather(*(sidecar.get("variables", "cold") for _ in range(300)))
    assert all(answer[:2] == (200, {"value": "v"}) for answer in answers)
    assert aws.calls["GetSecretValue"] == 1


async def test_300_concurrent_requests_for_an_absent_key_make_at_most_one_call(aws, start_sidecar):
    sidecar = await start_sidecar()

    answers = await asyncio.gather(*(sidecar.get("variables", "absent") for _ in range(300)))
    assert {answer[0] for answer in answers} == {404}
    assert aws.calls["GetSecretValue"] <= 1


async def test_after_warm_up_1000_lookups_over_25_keys_cost_almost_nothing(aws, start_sidecar):
    for i in range(15):
        aws.put(f"airflow/variables/var{i}", f"value {i}")
    for i in range(5):
        aws.put(f"airflow/connections/conn{i}", f"postgresql://u:p@h/{i}")
    sidecar = await start_sidecar(warm=True)
    warm_up_calls = dict(aws.calls)
    aws.clear_counts()
    keys = [("variables", f"var{i}") for i in range(15)] + [("connections", f"conn{i}") for i in range(5)]
    keys += [("variables", f"absent{i}") for i in range(5)]

    for round_ in range(40):
        for kind, key in keys:
            status, _, cache = await sidecar.get(kind, key)
            assert status == (404 if key.startswith("absent") else 200)
            # An absent name is asked of AWS once, by name: a listing lags new secrets.
            assert cache == ("miss" if round_ == 0 and key.startswith("absent") else "hit")

    assert aws.calls == {"GetSecretValue": 5}
    assert warm_up_calls == {"ListSecrets": 1, "BatchGetSecretValue": 1}  # one listing for the three prefixes


async def test_a_key_read_steadily_across_ten_ttls_is_never_a_miss_after_the_first(aws, start_sidecar):
    aws.put("airflow/variables/steady", "v")
    sidecar = await start_sidecar(ttl=300)
    caches = []
    for _ in range(100):
        caches.append((await sidecar.get("variables", "steady"))[2])
        sidecar.clock.advance(30)
        await sidecar.daemon.cache.refresh_due()

    assert caches[0] == "miss"
    assert set(caches[1:]) == {"hit"}
    # one fetch, then one refresh per 0.8 TTL: 3000 s / 240 s
    assert aws.calls["BatchGetSecretValue"] + aws.calls["GetSecretValue"] <= 1 + 13


async def test_aws_down_serves_stale_then_recovers(aws: AwsEmulator, start_sidecar, caplog):
    aws.put("airflow/variables/known", "v")
    sidecar = await start_sidecar(ttl=300, negative_ttl=300, max_stale=3600)
    assert (await sidecar.get("variables", "known"))[2] == "miss"
    assert (await sidecar.get("variables", "known_absent"))[0] == 404
    sidecar.clock.advance(301)
    aws.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="sidecar"):
            for _ in range(3):
                assert await sidecar.get("variables", "known") == (200, {"value": "v"}, "stale")
                assert (await sidecar.get("variables", "known_absent"))[::2] == (404, "stale")
            status, body, _ = await sidecar.get("variables", "never_seen")
            assert (status, body["error"]) == (503, "upstream_unavailable")
            # One failed fetch per key (known, known_absent, never_seen); the stale keys' go on
            # behind their answers and may end later.
            deadline = time.monotonic() + 30
            while _upstream(sidecar, "GetSecretValue", "error") < 3:
                assert time.monotonic() < deadline, "the stale keys' fetches never ended"
                await asyncio.sleep(0.01)
            for _ in range(20):  # back-off: answered at once, no new AWS call
                assert (await sidecar.get("variables", "never_seen"))[0] == 503
            assert _upstream(sidecar, "GetSecretValue", "error") == 3
        assert len([r for r in caplog.records if "serving cached answers" in r.getMessage()]) == 1
    finally:
        aws.start()

    sidecar.clock.advance(120)  # past the back-off
    aws.put("airflow/variables/never_seen", "now here")
    assert await sidecar.get("variables", "known") == (200, {"value": "v"}, "miss")
    assert (await sidecar.get("variables", "never_seen"))[:2] == (200, {"value": "now here"})


async def test_access_denied_serves_nothing_stale(aws, start_sidecar):
    aws.put("airflow/variables/revoked", "v")
    sidecar = await start_sidecar(ttl=300)
    await sidecar.get("variables", "revoked")
    sidecar.clock.advance(301)
    aws.fail["GetSecretValue"] = "AccessDeniedException"

    status, body, _ = await sidecar.get("variables", "revoked")
    assert (status, body["error"]) == (503, "upstream_error")
    assert "AccessDeniedException" in body["message"]
    assert "IAM" in body["message"]
    aws.fail.clear()
    aws.fail["GetSecretValue"] = "ThrottlingException"
    sidecar.clock.advance(120)
    assert (await sidecar.get("variables", "revoked"))[0] == 503  # the old value is gone for good


async def test_deleted_secret_stops_being_served_at_expiry(aws, start_sidecar):
    aws.put("airflow/variables/gone", "v")
    sidecar = await start_sidecar(ttl=300)
    await sidecar.get("variables", "gone")
    aws.client().delete_secret(SecretId="airflow/variables/gone", ForceDeleteWithoutRecovery=True)
    sidecar.clock.advance(301)

    assert (await sidecar.get("variables", "gone"))[0] == 404


async def test_a_secret_created_after_the_listing_is_found_at_its_first_lookup(aws, start_sidecar):
    aws.put("airflow/variables/a", "1")
    sidecar = await start_sidecar(warm=True, list_interval=60)
    aws.clear_counts()
    aws.put("airflow/variables/b", "2")

    assert await sidecar.get("variables", "b") == (200, {"value": "2"}, "miss")
    assert aws.calls == {"GetSecretValue": 1}


async def test_refresh_true_looks_past_the_listing(aws, start_sidecar):
    sidecar = await start_sidecar(warm=True)
    aws.put("airflow/variables/new", "v")

    assert (await sidecar.get("variables", "new", refresh=True))[:2] == (200, {"value": "v"})


async def test_listing_denied_falls_back_to_lazy_lookups(aws, start_sidecar, caplog):
    aws.put("airflow/variables/v", "1")
    aws.fail["ListSecrets"] = "AccessDeniedException"
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        sidecar = await start_sidecar(warm=True)

    async with sidecar.http.get(f"{sidecar.url}/readyz") as response:
        assert response.status == 200
    assert (await sidecar.get("variables", "v"))[:2] == (200, {"value": "1"})
    assert (await sidecar.get("variables", "absent"))[0] == 404
    assert aws.calls["GetSecretValue"] == 2
    assert any("secretsmanager:ListSecrets" in r.getMessage() for r in caplog.records)


async def test_batch_get_denied_falls_back_to_one_by_one(aws, start_sidecar, caplog):
    aws.put("airflow/variables/v", "1")
    aws.fail["BatchGetSecretValue"] = "AccessDeniedException"
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        sidecar = await start_sidecar(warm=True)
    aws.clear_counts()

    assert await sidecar.get("variables", "v") == (200, {"value": "1"}, "hit")
    assert aws.total() == 0
    assert any("secretsmanager:BatchGetSecretValue" in r.getMessage() for r in caplog.records)


async def test_warm_up_waits_for_aws_and_readyz_says_why(aws, start_sidecar):
    aws.fail["ListSecrets"] = "InternalServiceError"  # a throttled listing serves lazily: test_quotas.py
    sidecar = await start_sidecar(warmup="true")
    warm_up = asyncio.ensure_future(sidecar.daemon.warmup.warm_up())
    while aws.calls["ListSecrets"] < 1:
        await asyncio.sleep(0.01)
    async with sidecar.http.get(f"{sidecar.url}/readyz") as response:
        body = await response.json()
    assert response.status == 503
    aws.fail.clear()
    await asyncio.wait_for(warm_up, 30)
    async with sidecar.http.get(f"{sidecar.url}/readyz") as response:
        assert response.status == 200
    assert body["status"] == "not_ready"


def _upstream(sidecar, api: str, outcome: str) -> float:
    metrics = sidecar.daemon.metrics
    return sample_value(metrics, "sidecar_upstream_calls_total", {"api": api, "outcome": outcome}) or 0.0


async def test_a_hit_is_answered_without_a_task_or_a_timer_and_counted_once(aws, start_sidecar, monkeypatch):
    """The hot path: a cached answer (found, missing, team-scoped) never goes through wait_for."""
    from sidecar.daemon.http import handler as server

    aws.put("airflow/variables/v", "x")
    aws.put("airflow/connections/c", '{"user": "u", "engine": "http"}')
    running = await start_sidecar()
    for kind, key in (("variables", "v"), ("variables", "absent"), ("connections", "c")):
        assert (await running.get(kind, key))[2] == "miss"

    def no_wait_for(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a hit went through asyncio.wait_for")

    monkeypatch.setattr(server.asyncio, "wait_for", no_wait_for)
    calls = aws.total()
    assert await running.get("variables", "v") == (200, {"value": "x"}, "hit")
    assert (await running.get("variables", "absent"))[::2] == (404, "hit")
    connection = await running.get("connections", "c")
    assert json.loads(connection[1]["value"])["login"] == "u" and connection[2] == "hit"
    assert aws.total() == calls
    metrics = running.daemon.metrics
    assert sample_value(metrics, "sidecar_cache_lookups_total", {"result": "hit"}) == 2
    assert sample_value(metrics, "sidecar_cache_lookups_total", {"result": "negative_hit"}) == 1


def _lookups(sidecar, result: str) -> float:
    return sample_value(sidecar.daemon.metrics, "sidecar_cache_lookups_total", {"result": result}) or 0.0


async def test_a_hit_answered_many_times_expires_with_its_ttl(aws, start_sidecar):
    """A key's answer is built once and reused; reused or not, it never outlives the entry's TTL."""
    aws.put("airflow/variables/v", "old")
    sidecar = await start_sidecar(ttl=300)
    assert (await sidecar.get("variables", "v"))[2] == "miss"
    for _ in range(3):
        assert await sidecar.get("variables", "v") == (200, {"value": "old"}, "hit")
    aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="new")
    sidecar.clock.advance(299)
    assert await sidecar.get("variables", "v") == (200, {"value": "old"}, "hit")
    sidecar.clock.advance(1)

    assert await sidecar.get("variables", "v") == (200, {"value": "new"}, "miss")
    assert _lookups(sidecar, "hit") == 4  # each answer counted, reused or not


async def test_an_absent_name_answered_many_times_is_found_after_the_next_listing(aws, start_sidecar):
    sidecar = await start_sidecar(warm=True, list_interval=60)
    assert (await sidecar.get("variables", "late"))[::2] == (404, "miss")
    for _ in range(3):
        assert (await sidecar.get("variables", "late"))[::2] == (404, "hit")
    assert _lookups(sidecar, "negative_hit") == 3
    aws.put("airflow/variables/late", "v")
    sidecar.clock.advance(60)
    assert (await sidecar.get("variables", "late"))[::2] == (404, "hit")  # remembered until the listing
    await sidecar.daemon.warmup.list_once()

    assert await sidecar.get("variables", "late") == (200, {"value": "v"}, "hit")
