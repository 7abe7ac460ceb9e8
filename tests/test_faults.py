"""Whatever AWS does, Airflow gets the right answer: faults injected between the daemon and AWS.

The daemon runs in this test's event loop on a real socket with a fake clock; AWS is moto's
server behind `tests.faults.FaultProxy`, which resets, black-holes, holds, throttles or denies
per API. Each test asserts what Airflow gets (status, value, X-Cache) and what AWS gets (calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import aiohttp

from sidecar.daemon.cache.cache import REFRESH_MIN_INTERVAL
from sidecar.daemon.lifecycle import Daemon
from sidecar.daemon.sources.base import UpstreamError
from tests.support import TOKEN, AwsEmulator, FakeClock, make_settings, sample_value


def _via(proxy) -> dict[str, str]:
    return {"endpoint_url": proxy.endpoint}


async def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _upstream(sidecar, api: str, outcome: str) -> float:
    metrics = sidecar.daemon.metrics
    return sample_value(metrics, "sidecar_upstream_calls_total", {"api": api, "outcome": outcome}) or 0.0


# --- 1. AWS black-holed: stale answers at once, the fetch goes on behind them ---


async def test_black_holed_aws_serves_the_expired_value_and_the_known_miss_stale(aws, proxy, start_sidecar):
    aws.put("airflow/variables/known", "v")
    sidecar = await start_sidecar(
        backend_kwargs=_via(proxy), ttl=300, negative_ttl=300, max_stale=3600, request_timeout=5
    )
    assert (await sidecar.get("variables", "known"))[::2] == (200, "miss")
    assert (await sidecar.get("variables", "known_absent"))[::2] == (404, "miss")
    sidecar.clock.advance(301)
    proxy.set("*", "blackhole")

    assert await sidecar.get("variables", "known") == (200, {"value": "v"}, "stale")
    assert (await sidecar.get("variables", "known_absent"))[::2] == (404, "stale")
    assert proxy.held() >= 1  # the fetches are still waiting on AWS, behind the stale answers

    proxy.clear()  # the black hole ends: the held connections drop, the fetches fail or retry
    await _wait(lambda: proxy.held() == 0, "the held requests to end")


async def test_black_holed_aws_with_nothing_cached_is_a_clear_503_timeout(aws, proxy, start_sidecar):
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), request_timeout=0.5)
    proxy.set("*", "blackhole")

    status, body, _ = await sidecar.get("variables", "never_seen")
    assert (status, body["error"]) == (503, "timeout")


# --- 2. A listing outage longer than two intervals: the last listing answers, stale ---


async def test_a_listing_outage_keeps_the_last_listing_authoritative_as_stale_misses(aws, proxy, start_sidecar):
    aws.put("airflow/variables/present", "v")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, list_interval=60, max_stale=3600)
    proxy.set("*", "throttle")
    proxy.reset_counts()
    for _ in range(3):  # three failed listings: more than two intervals without a good one
        sidecar.clock.advance(60)
        with contextlib.suppress(UpstreamError):
            await sidecar.daemon.catalog.refresh()

    for _ in range(5):
        assert (await sidecar.get("variables", "never_read_absent"))[::2] == (404, "stale")
    # A miss is still asked of AWS by name, once, behind the stale answers (botocore may retry that
    # call); once it has failed, its back-off on the fake clock, which stands still, keeps every
    # later lookup from asking again.
    await _wait(lambda: _upstream(sidecar, "GetSecretValue", "throttled") == 1, "the fetch behind the stale answers")
    sent = proxy.counts()["GetSecretValue"]
    for _ in range(5):
        assert (await sidecar.get("variables", "never_read_absent"))[::2] == (404, "stale")
    assert (_upstream(sidecar, "GetSecretValue", "throttled"), proxy.counts()["GetSecretValue"]) == (1, sent)

    sidecar.clock.advance(3600)  # past max_stale: the old listing no longer speaks
    assert (await sidecar.get("variables", "never_read_absent"))[0] == 503
    assert proxy.counts().get("GetSecretValue", 0) >= 1


async def test_a_denied_listing_stops_being_authoritative_after_two_intervals(aws, proxy, start_sidecar):
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, list_interval=60)
    proxy.set("ListSecrets", "denied")
    sidecar.clock.advance(121)
    with contextlib.suppress(UpstreamError):
        await sidecar.daemon.catalog.refresh()
    aws.put("airflow/variables/created_since", "new")

    assert (await sidecar.get("variables", "created_since"))[:2] == (200, {"value": "new"})


# --- 3. Refresh-ahead backs off while AWS throttles ---


async def test_refresh_ahead_backs_off_per_key_while_aws_throttles(aws, proxy, start_sidecar):
    aws.put("airflow/variables/read_twice", "v")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), ttl=300)
    await sidecar.get("variables", "read_twice")
    await sidecar.get("variables", "read_twice")
    proxy.set("*", "throttle")
    proxy.reset_counts()

    sidecar.clock.advance(240)  # the refresh point
    for _ in range(31):  # a pass each second, as the daemon runs them
        await sidecar.daemon.cache.refresh_due()
        sidecar.clock.advance(1)
        assert (await sidecar.get("variables", "read_twice"))[:2] == (200, {"value": "v"})

    # Back-off 1, 2, 4, 8, 16 s: at most 6 refreshes in 31 s, not 31; botocore tries each 3 times.
    refreshes = _upstream(sidecar, "BatchGetSecretValue", "throttled")
    assert _upstream(sidecar, "BatchGetSecretValue", "error") == 0  # throttling is told apart from errors
    assert 1 <= refreshes <= 6
    assert proxy.counts()["BatchGetSecretValue"] <= 3 * refreshes


# --- 4. A late batch answer never undoes a newer decision ---


async def _refresh_held_at_aws(sidecar, proxy) -> asyncio.Future[int]:
    """Start a refresh-ahead pass whose BatchGetSecretValue AWS answers now, delivered when released."""
    proxy.set("BatchGetSecretValue", "late")
    sidecar.clock.advance(240)
    refresh = asyncio.ensure_future(sidecar.daemon.cache.refresh_due())
    await _wait(lambda: proxy.held("BatchGetSecretValue") == 1, "the refresh to reach AWS")
    return refresh


async def test_a_late_refresh_answer_does_not_resurrect_a_revoked_value(aws, proxy, start_sidecar):
    aws.put("airflow/variables/revoked", "old")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), ttl=300)
    await sidecar.get("variables", "revoked")
    await sidecar.get("variables", "revoked")
    refresh = await _refresh_held_at_aws(sidecar, proxy)

    proxy.set("GetSecretValue", "denied")
    status, body, _ = await sidecar.get("variables", "revoked", refresh=True)
    assert (status, body["error"]) == (503, "upstream_error")
    proxy.set("GetSecretValue", "normal")
    proxy.release("BatchGetSecretValue")  # the batch answers now, with the value from before
    await asyncio.wait_for(refresh, 30)

    status, body, _ = await sidecar.get("variables", "revoked")
    assert (status, body["error"]) == (503, "upstream_error")  # not the old value
    assert "old" not in str(body)


async def test_a_late_refresh_answer_does_not_undo_a_rotation(aws, proxy, start_sidecar):
    aws.put("airflow/variables/rotated", "old")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), ttl=300)
    await sidecar.get("variables", "rotated")
    await sidecar.get("variables", "rotated")
    refresh = await _refresh_held_at_aws(sidecar, proxy)

    aws.client().put_secret_value(SecretId="airflow/variables/rotated", SecretString="new")
    assert await sidecar.get("variables", "rotated", refresh=True) == (200, {"value": "new"}, "miss")
    proxy.release("BatchGetSecretValue")
    await asyncio.wait_for(refresh, 30)

    assert await sidecar.get("variables", "rotated") == (200, {"value": "new"}, "hit")


# --- 5. Token rotation ---


def _write(path, token: str) -> None:
    """Replace the file atomically, as the kubelet swaps a Secret volume."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(token)
    os.replace(temporary, path)


async def test_a_token_rotated_a_moment_ago_is_accepted_at_once(aws, start_sidecar, tmp_path):
    token_file = tmp_path / "token"
    _write(token_file, TOKEN)
    sidecar = await start_sidecar(token_file=str(token_file))
    _write(token_file, "rotated-token-0123456789")  # the clock does not move: no periodic check

    assert (await sidecar.get("variables", "v", token="rotated-token-0123456789"))[0] == 404
    assert (await sidecar.get("variables", "v", token=TOKEN))[0] == 401


async def test_a_rotation_while_the_daemon_starts_is_not_missed(aws, tmp_path):
    token_file = tmp_path / "token"
    _write(token_file, TOKEN)
    settings = make_settings(aws, token_file=str(token_file), warmup="false")  # reads the token
    _write(token_file, "rotated-token-0123456789")  # rotated before the daemon takes over
    clock = FakeClock()
    daemon = Daemon(settings, timer=clock)
    await daemon.open()
    try:
        async with aiohttp.ClientSession() as http:

            async def status(token: str) -> int:
                async with http.get(f"{daemon.url}/v1/variables/v", headers={"X-Sidecar-Token": token}) as response:
                    return response.status

            clock.advance(5)
            assert await status(TOKEN) == 401
            assert await status("rotated-token-0123456789") == 404
    finally:
        await daemon.stop()


# --- smaller ones ---


async def test_one_refused_secret_does_not_throw_away_the_others_from_a_fallback(aws, start_sidecar):
    for name in ("a", "b", "refused"):
        aws.put(f"airflow/variables/{name}", f"value of {name}")
    aws.fail["BatchGetSecretValue"] = "AccessDeniedException"
    aws.fail["GetSecretValue:airflow/variables/refused"] = "AccessDeniedException"
    sidecar = await start_sidecar(warm=True)
    aws.clear_counts()

    assert await sidecar.get("variables", "a") == (200, {"value": "value of a"}, "hit")
    assert await sidecar.get("variables", "b") == (200, {"value": "value of b"}, "hit")
    status, body, _ = await sidecar.get("variables", "refused")
    assert (status, body["error"]) == (503, "upstream_error")
    assert aws.total() == 0  # all three answered at warm-up, the refusal too (during its back-off)


async def test_a_refused_batch_api_is_tried_again_later(aws, start_sidecar, monkeypatch):
    from sidecar.daemon.sources import secretsmanager

    aws.put("airflow/variables/a", "1")
    aws.fail["BatchGetSecretValue"] = "AccessDeniedException"
    monkeypatch.setattr(secretsmanager, "BATCH_RETRY_AFTER", 0.0)  # as if the hour passed at once
    sidecar = await start_sidecar(warm=True, ttl=300)
    assert aws.calls["GetSecretValue"] == 1  # refused: one by one
    aws.fail.clear()
    aws.clear_counts()
    await sidecar.get("variables", "a")
    sidecar.clock.advance(240)

    assert await sidecar.daemon.cache.refresh_due() == 1
    assert aws.calls == {"BatchGetSecretValue": 1}


async def test_invalid_credentials_are_an_outage_not_a_revocation(aws: AwsEmulator, start_sidecar):
    aws.put("airflow/variables/k", "v")
    sidecar = await start_sidecar(ttl=300)
    await sidecar.get("variables", "k")
    sidecar.clock.advance(301)

    for code in ("UnrecognizedClientException", "InvalidSignatureException"):
        aws.fail["GetSecretValue"] = code
        assert await sidecar.get("variables", "k") == (200, {"value": "v"}, "stale")
        status, body, _ = await sidecar.get("variables", "never_seen")
        assert (status, body["error"]) == (503, "upstream_unavailable")
        assert "credentials" in body["message"]
        sidecar.clock.advance(120)  # past the back-off


async def test_far_more_keys_than_max_entries_keeps_the_bound_and_the_hot_key(aws, start_sidecar):
    aws.put("airflow/variables/hot", "h")
    sidecar = await start_sidecar(max_entries=50)
    await sidecar.get("variables", "hot")
    for i in range(400):
        assert (await sidecar.get("variables", f"cold{i}"))[0] == 404
        assert await sidecar.get("variables", "hot") == (200, {"value": "h"}, "hit")

    assert len(sidecar.daemon.cache) <= 50
    assert aws.names.count("airflow/variables/hot") == 1


async def test_a_jump_of_the_monotonic_clock_refetches_once_and_answers_right(aws, start_sidecar):
    for i in range(30):
        aws.put(f"airflow/variables/k{i}", str(i))
    sidecar = await start_sidecar(warm=True)
    for i in range(30):
        await sidecar.get("variables", f"k{i}")
    aws.clear_counts()

    sidecar.clock.advance(10 * 86400)  # a suspended VM resumes ten days later
    assert await sidecar.daemon.cache.refresh_due() == 0  # everything expired: nothing to refresh
    for i in range(30):
        assert (await sidecar.get("variables", f"k{i}"))[:2] == (200, {"value": str(i)})
    assert aws.calls["GetSecretValue"] == 30


async def test_assumed_role_renewal_denied_keeps_the_valid_credentials_until_they_expire(
    aws, proxy, start_sidecar, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", proxy.endpoint)  # STS behind the fault layer too
    aws.put("airflow/variables/v", "as the role")
    # 900 s, STS's shortest: within botocore's advisory window (15 min) from the start, so every
    # use tries to renew them, and a failed renewal is tolerated until the mandatory one (10 min).
    role = {
        "role_arn": "arn:aws:iam::123456789012:role/airflow-secrets",
        "assume_role_kwargs": {"DurationSeconds": 900},
    }
    sidecar = await start_sidecar(backend_kwargs={**_via(proxy), **role}, ttl=300)
    assert (await sidecar.get("variables", "v"))[:2] == (200, {"value": "as the role"})

    for mode in ("denied", "throttle", "normal"):
        proxy.set("AssumeRole", mode)
        sidecar.clock.advance(REFRESH_MIN_INTERVAL)
        assert (await sidecar.get("variables", "v", refresh=True))[:2] == (200, {"value": "as the role"})
    # The first, then a renewal tried at each use; the throttled one's retries may still be sleeping
    # in botocore's back-off (holding its refresh lock) when the last use is answered.
    await _wait(lambda: proxy.counts()["AssumeRole"] >= 4, "a renewal tried at each use")


async def test_stop_cancels_fetches_still_waiting_on_aws_before_the_client_closes(aws, proxy, start_sidecar):
    aws.put("airflow/variables/known", "v")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), ttl=300)
    await sidecar.get("variables", "known")
    sidecar.clock.advance(301)
    proxy.set("*", "blackhole")
    assert (await sidecar.get("variables", "known"))[2] == "stale"  # its fetch is still under way
    await _wait(lambda: proxy.held() >= 1, "the fetch to reach AWS")

    await sidecar.daemon.stop()
    pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert pending == []


# --- 6. The listing as a change feed: rotations, deletions, and secrets a lagging listing hides ---


async def _lagging(proxy, sidecar, seconds: float) -> None:
    """ListSecrets shows the account as it was `seconds` ago on the daemon's clock."""
    proxy.clock = sidecar.clock
    proxy.set("ListSecrets", "lag", delay=seconds)


async def test_a_hang_during_a_listing_answers_misses_stale_within_a_second(aws, proxy, start_sidecar):
    sidecar = await start_sidecar(
        backend_kwargs=_via(proxy), warm=True, ttl=1, negative_ttl=1, list_interval=1, request_timeout=4
    )
    assert (await sidecar.get("variables", "known_absent"))[::2] == (404, "miss")
    sidecar.clock.advance(2)
    proxy.set("*", "blackhole")
    listing = asyncio.ensure_future(sidecar.daemon.warmup.list_once())  # waits on AWS
    await _wait(lambda: proxy.held("ListSecrets") == 1, "the listing to reach AWS")
    sidecar.clock.advance(1.5)  # the last good listing is three intervals old

    # Stale after at most a second of waiting (half the request timeout), not a 503 at 4 s.
    assert (await sidecar.get("variables", "known_absent"))[::2] == (404, "stale")
    assert (await sidecar.get("variables", "never_asked"))[::2] == (404, "stale")  # the listing lacked it
    proxy.clear()
    with contextlib.suppress(UpstreamError):
        await asyncio.wait_for(listing, 30)


async def test_a_secret_created_under_a_lagging_listing_is_served_after_the_next_listing(aws, proxy, start_sidecar):
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, list_interval=60)
    await _lagging(proxy, sidecar, 300)  # AWS's documented worst case
    for _ in range(2):  # a DAG asks for it before it exists
        assert (await sidecar.get("variables", "new_one"))[0] == 404
    aws.put("airflow/variables/new_one", "v")
    sidecar.clock.advance(60)
    await sidecar.daemon.warmup.list_once()  # the listing lacks it: the remembered miss is asked again

    assert await sidecar.get("variables", "new_one") == (200, {"value": "v"}, "hit")


async def test_a_name_nobody_creates_costs_at_most_one_call_per_listing_interval(aws, proxy, start_sidecar):
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, list_interval=60)
    await _lagging(proxy, sidecar, 300)
    aws.clear_counts()
    intervals = 10
    for _ in range(intervals):
        for _ in range(6):  # read every ten seconds
            assert (await sidecar.get("variables", "nobody"))[0] == 404
            sidecar.clock.advance(10)
        await sidecar.daemon.warmup.list_once()

    assert aws.names.count("airflow/variables/nobody") <= 1 + intervals  # its first read, then one per listing
    unread = "airflow/variables/read_once"
    assert (await sidecar.get("variables", "read_once"))[0] == 404
    for _ in range(3):  # nobody reads it again: it lapses at the next listing, and costs nothing
        sidecar.clock.advance(60)
        await sidecar.daemon.warmup.list_once()
    assert aws.names.count(unread) == 1


async def test_a_rotation_by_put_secret_value_is_served_after_the_next_listing(aws, proxy, start_sidecar):
    aws.put("airflow/variables/rotated", "old")
    aws.put("airflow/variables/unchanged", "same")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, ttl=3600, list_interval=60)
    for key in ("rotated", "unchanged"):
        assert (await sidecar.get("variables", key))[2] == "hit"
    aws.client().put_secret_value(SecretId="airflow/variables/rotated", SecretString="new")
    proxy.reset_counts()
    aws.clear_counts()
    sidecar.clock.advance(60)
    await sidecar.daemon.warmup.list_once()

    assert await sidecar.get("variables", "rotated") == (200, {"value": "new"}, "hit")
    assert proxy.counts() == {"ListSecrets": 1, "BatchGetSecretValue": 1}
    assert "airflow/variables/unchanged" not in aws.names  # its version did not move: not fetched


async def test_a_stage_moved_back_by_update_secret_version_stage_is_served_after_the_next_listing(
    aws, proxy, start_sidecar
):
    secrets = aws.client()
    first = secrets.create_secret(Name="airflow/variables/rolled", SecretString="v1")["VersionId"]
    second = secrets.put_secret_value(SecretId="airflow/variables/rolled", SecretString="v2")["VersionId"]
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, ttl=3600, list_interval=60)
    assert (await sidecar.get("variables", "rolled"))[1] == {"value": "v2"}
    secrets.update_secret_version_stage(
        SecretId="airflow/variables/rolled",
        VersionStage="AWSCURRENT",
        MoveToVersionId=first,
        RemoveFromVersionId=second,
    )
    sidecar.clock.advance(60)
    await sidecar.daemon.warmup.list_once()

    assert await sidecar.get("variables", "rolled") == (200, {"value": "v1"}, "hit")


async def test_a_rotation_under_a_lagging_listing_is_served_once_the_listing_shows_it(aws, proxy, start_sidecar):
    aws.put("airflow/variables/rotated", "old")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, ttl=3600, list_interval=60)
    await _lagging(proxy, sidecar, 120)
    aws.client().put_secret_value(SecretId="airflow/variables/rotated", SecretString="new")
    for _ in range(2):  # the listings still show the old version map
        sidecar.clock.advance(60)
        await sidecar.daemon.warmup.list_once()
        assert (await sidecar.get("variables", "rotated"))[1] == {"value": "old"}
    sidecar.clock.advance(60)  # more than the lag since the layer saw the new map
    await sidecar.daemon.warmup.list_once()

    assert (await sidecar.get("variables", "rotated"))[1] == {"value": "new"}


async def test_a_deleted_secret_is_a_404_after_the_listing_that_shows_it_gone(aws, proxy, start_sidecar):
    aws.put("airflow/variables/gone", "v")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, ttl=3600, list_interval=60)
    await _lagging(proxy, sidecar, 60)
    assert (await sidecar.get("variables", "gone"))[1] == {"value": "v"}
    aws.client().delete_secret(SecretId="airflow/variables/gone", ForceDeleteWithoutRecovery=True)
    sidecar.clock.advance(60)
    await sidecar.daemon.warmup.list_once()  # the layer sees it gone: still listed for a minute
    assert (await sidecar.get("variables", "gone"))[1] == {"value": "v"}
    sidecar.clock.advance(61)
    await sidecar.daemon.warmup.list_once()

    assert (await sidecar.get("variables", "gone"))[::2] == (404, "hit")


async def test_a_rotation_whose_refetch_fails_is_not_served_fresh_until_the_ttl(aws, proxy, start_sidecar):
    aws.put("airflow/variables/rotated", "old")
    sidecar = await start_sidecar(backend_kwargs=_via(proxy), warm=True, ttl=3600, list_interval=60)
    assert (await sidecar.get("variables", "rotated"))[1] == {"value": "old"}
    aws.client().put_secret_value(SecretId="airflow/variables/rotated", SecretString="new")
    proxy.set("BatchGetSecretValue", "5xx")
    sidecar.clock.advance(60)
    await sidecar.daemon.warmup.list_once()  # the listing shows the rotation; its batch fails
    proxy.set("GetSecretValue", "5xx")
    assert await sidecar.get("variables", "rotated") == (200, {"value": "old"}, "stale")  # AWS still failing
    proxy.clear()
    sidecar.clock.advance(120)  # past the back-off

    assert await sidecar.get("variables", "rotated") == (200, {"value": "new"}, "miss")
