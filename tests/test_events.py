"""AWS's change events pushed to the daemon (SIDECAR_EVENTS): what an event may say, and a
rotation served in seconds, through moto's real SNS -> SQS fan-out.

moto emits no Secrets Manager events: each test publishes what AWS would send after its change,
to the topic (mode sns) or to the operator's queue (mode sqs). Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import sidecar
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.events.hints import ACCEPTED, CHANGING_CALLS, EVENTS, FOREIGN, MALFORMED, OUTSIDE, Reader
from sidecar.daemon.events.queue import (
    HEARTBEAT_EVERY,
    HEARTBEAT_TAG,
    LONG_POLL,
    QUEUE_NAME_MAX,
    STALE_HEARTBEAT,
    queue_name,
)
from sidecar.daemon.lifecycle import Daemon
from sidecar.daemon.settings import DEFAULTS
from tests.support import REGION, TOKEN, AwsEmulator, FakeClock, make_settings, metric_samples, sample_value

PREFIXES = ["airflow/config/", "airflow/connections/", "airflow/variables/"]
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:airflow/variables/db-a1B2c3"


def label_updated(name: str, source: str = "aws.secretsmanager", **extra: Any) -> dict[str, Any]:
    """The event AWS sends when AWSCURRENT moves (docs: event-detail-secret-label-updated)."""
    return {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "Secret Label Updated",
        "source": source,
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": [f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-a1B2c3"],
        "detail": {"name": name, "labelUpdated": "AWSCURRENT", "versionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"},
        **extra,
    }


def api_call(event_name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.secretsmanager",
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com",
            "eventName": event_name,
            "requestParameters": parameters,
        },
    }


# --- what an event may say ---


@pytest.mark.parametrize(
    ("body", "outcome", "name"),
    [
        (json.dumps(label_updated("airflow/variables/db")), ACCEPTED, "airflow/variables/db"),
        (
            json.dumps({"Type": "Notification", "Message": json.dumps(label_updated("airflow/variables/db"))}),
            ACCEPTED,
            "airflow/variables/db",
        ),
        (json.dumps(api_call("PutSecretValue", {"secretId": ARN})), ACCEPTED, "airflow/variables/db"),
        (json.dumps(api_call("CreateSecret", {"name": "airflow/connections/c"})), ACCEPTED, "airflow/connections/c"),
        (json.dumps(api_call("DeleteSecret", {"secretId": "airflow/variables/x"})), ACCEPTED, "airflow/variables/x"),
        (json.dumps(api_call("GetSecretValue", {"secretId": "airflow/variables/x"})), FOREIGN, None),
        (json.dumps(label_updated("airflow/variables/db", source="my.forged")), FOREIGN, None),
        (json.dumps({**label_updated("airflow/variables/db"), "detail-type": "Other"}), FOREIGN, None),
        (json.dumps(label_updated("other/team/db")), OUTSIDE, None),
        (json.dumps(label_updated("airflow/variablesX")), OUTSIDE, None),
        ("not json", MALFORMED, None),
        (json.dumps({"Type": "Notification", "Message": "{broken"}), MALFORMED, None),
        (json.dumps([1, 2]), MALFORMED, None),
        (json.dumps({**label_updated("airflow/variables/db"), "detail": "x"}), MALFORMED, None),
        (json.dumps({**label_updated("airflow/variables/db"), "detail": {"name": 7}}), MALFORMED, None),
    ],
)
def test_an_event_names_a_secret_under_a_prefix_or_is_dropped_with_its_reason(body, outcome, name):
    hint = Reader("secretsmanager", PREFIXES).read(body)
    assert (hint.outcome, hint.name) == (outcome, name)


def test_parameter_store_changes_are_read_for_ssm_and_only_there():
    event = {"source": "aws.ssm", "detail-type": "Parameter Store Change", "detail": {"name": "/airflow/variables/v"}}
    assert Reader("ssm", ["/airflow/variables/"]).read(json.dumps(event)).name == "/airflow/variables/v"
    assert Reader("secretsmanager", PREFIXES).read(json.dumps(event)).outcome == FOREIGN
    assert (
        Reader("ssm", ["/airflow/variables/"]).read(json.dumps(label_updated("/airflow/variables/v"))).outcome
        == FOREIGN
    )


def test_a_queue_name_keeps_to_sqs_rules_whatever_the_identity():
    name = queue_name("airflow-secrets-sidecar-", "worker-0.airflow.svc/" + "x" * 100, "abc123")
    assert len(name) == QUEUE_NAME_MAX and name.endswith("-abc123")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    assert queue_name("p-", "a") != queue_name("p-", "a")  # a restart never meets QueueDeletedRecently


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"events": "sns"}, "SIDECAR_EVENTS=sns needs --events-topic-arn / SIDECAR_EVENTS_TOPIC_ARN"),
        ({"events": "sqs"}, "SIDECAR_EVENTS=sqs needs --events-queue-url / SIDECAR_EVENTS_QUEUE_URL"),
        ({"events": "kafka"}, "invalid --events / SIDECAR_EVENTS: must be one of off, sns, sqs"),
        ({"events": "sns", "events_topic_arn": "topic"}, "must be an SNS topic's ARN, got 'topic'"),
        ({"events_queue_prefix": "a b"}, "SIDECAR_EVENTS_QUEUE_PREFIX: must be 1 to 40 of"),
    ],
)
def test_event_settings_are_checked_against_their_mode(env, message):
    with pytest.raises(ConfigError, match=message):
        make_settings("http://127.0.0.1:1", **env)


def test_a_task_pod_never_subscribes():
    settings = make_settings("http://127.0.0.1:1", events="sns", events_topic_arn=TOPIC_ARN_EXAMPLE, task_pod="true")
    assert settings.events == "off"


TOPIC_ARN_EXAMPLE = "arn:aws:sns:us-east-1:123456789012:airflow-secrets-sidecar-events"


# --- through moto's SNS and SQS ---


@pytest.fixture
def events_aws(aws: AwsEmulator, monkeypatch: pytest.MonkeyPatch) -> AwsEmulator:
    """The emulator as SQS and SNS too, for the daemon's event clients (botocore reads these)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", aws.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", aws.endpoint)
    return aws


@pytest.fixture
def topic(events_aws: AwsEmulator) -> str:
    return events_aws.client("sns").create_topic(Name="airflow-secrets-sidecar-events")["TopicArn"]


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> float:
    """Wait for `predicate`, at most `timeout` seconds; return how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():
        assert loop.time() - started < timeout, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(0.02)
    return loop.time() - started


@pytest.fixture
async def start_daemon(events_aws: AwsEmulator) -> AsyncIterator[Callable[..., Any]]:
    """A daemon with its background tasks (warm-up, listing, events), on a fake clock."""
    import aiohttp

    running: list[Daemon] = []
    session = aiohttp.ClientSession()

    async def start(**env: Any) -> Any:
        env = {"list_interval": 3600, "events_identity": f"pod-{len(running)}", **env}
        daemon = Daemon(make_settings(events_aws, **env), timer=FakeClock(), jitter=lambda a, b: 1.0)
        await daemon.start()
        running.append(daemon)
        await until(lambda: daemon.warmup.readiness.ready, "the warm-up")
        if daemon.events is not None and daemon.settings.events == "sns":
            await until(lambda: daemon.events._queue.subscription_arn, "the subscription")

        async def get(key: str) -> tuple[int, Any]:
            url = f"{daemon.url}/v1/variables/{key}"
            async with session.get(url, headers={"X-Sidecar-Token": TOKEN}) as response:
                return response.status, (await response.json()).get("value")

        daemon.get = get
        return daemon

    yield start
    for daemon in running:
        await daemon.stop()
    await session.close()


async def ask_until(daemon: Daemon, key: str, value: str, within: float) -> list[tuple[int, Any]]:
    """Ask for `key` until it answers `value`, at most `within` seconds; every answer on the way."""
    loop = asyncio.get_running_loop()
    started, answers = loop.time(), [await daemon.get(key)]
    while answers[-1] != (200, value):
        assert loop.time() - started < within, f"still {answers[-1]} after {within:g} s"
        await asyncio.sleep(0.02)
        answers.append(await daemon.get(key))
    return answers


def publish(aws: AwsEmulator, topic: str, event: dict[str, Any]) -> None:
    aws.client("sns").publish(TopicArn=topic, Message=json.dumps(event))


def received(daemon: Daemon, outcome: str) -> float:
    value = sample_value(daemon.metrics, "sidecar_events_received_total", {"outcome": outcome})
    return value or 0.0


async def test_a_rotation_is_served_within_two_seconds_with_no_listing(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/db_password", "old")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("db_password") == (200, "old")
    listings = events_aws.calls["ListSecrets"]

    events_aws.client().put_secret_value(SecretId="airflow/variables/db_password", SecretString="new")
    publish(events_aws, topic, label_updated("airflow/variables/db_password"))
    answers = await ask_until(daemon, "db_password", "new", within=2.0)
    assert events_aws.calls["ListSecrets"] == listings  # no listing in between
    assert received(daemon, ACCEPTED) == 1
    assert set(answers) <= {(200, "old"), (200, "new")}


async def test_three_daemons_on_one_topic_each_see_every_event(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/shared", "old")
    daemons = [await start_daemon(events="sns", events_topic_arn=topic) for _ in range(3)]
    for daemon in daemons:
        assert await daemon.get("shared") == (200, "old")
    events_aws.client().put_secret_value(SecretId="airflow/variables/shared", SecretString="new")
    publish(events_aws, topic, label_updated("airflow/variables/shared"))
    for daemon in daemons:
        await until(lambda daemon=daemon: received(daemon, ACCEPTED) == 1, "each daemon's event")
    for daemon in daemons:
        await until(lambda daemon=daemon: _fetched(daemon, "changed") == 1, "each daemon's fetch")
        assert await daemon.get("shared") == (200, "new")


async def test_forged_outside_and_malformed_events_are_counted_and_fetch_nothing(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("v") == (200, "one")
    gets = events_aws.calls["GetSecretValue"]
    publish(events_aws, topic, label_updated("airflow/variables/v", source="attacker.forged"))
    # The topic's filter policy keeps names outside the prefixes from this daemon's queue
    publish(events_aws, topic, label_updated("elsewhere/v"))
    # ...and whatever else reaches the queue (anyone the queue's policy lets send) is checked again.
    sqs = events_aws.client("sqs")
    for body in ("{not json", {**label_updated("airflow/variables/v"), "detail": {"name": 12}}, label_updated("x/v")):
        sqs.send_message(
            QueueUrl=daemon.events._queue.url, MessageBody=body if isinstance(body, str) else json.dumps(body)
        )
    await until(lambda: received(daemon, MALFORMED) == 2, "the two malformed bodies")
    await until(lambda: received(daemon, OUTSIDE) == 1, "the name outside the prefixes")
    assert received(daemon, FOREIGN) == 1 and received(daemon, ACCEPTED) == 0
    assert events_aws.calls["GetSecretValue"] == gets
    assert await daemon.get("v") == (200, "one")


async def test_duplicates_and_out_of_order_events_give_the_current_value(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("v") == (200, "one")
    client = events_aws.client()
    client.put_secret_value(SecretId="airflow/variables/v", SecretString="two")
    first = label_updated("airflow/variables/v")
    client.put_secret_value(SecretId="airflow/variables/v", SecretString="three")
    second = label_updated("airflow/variables/v")
    for event in (second, first, second, first):  # late, repeated, out of order
        publish(events_aws, topic, event)
    await until(lambda: received(daemon, ACCEPTED) == 4, "the four events")
    await until(lambda: sum(_fetched(daemon, o) for o in ("changed", "unchanged", "failed")) >= 1, "the fetches")
    await until(lambda: not daemon.events._fetching, "the fetches to land")
    assert await daemon.get("v") == (200, "three")


async def test_an_event_before_get_secret_value_shows_its_version_is_asked_again(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("v") == (200, "one")
    listings = events_aws.calls["ListSecrets"]
    publish(events_aws, topic, label_updated("airflow/variables/v"))  # AWS not consistent yet
    await until(lambda: events_aws.calls["GetSecretValue"] >= 1, "the first fetch")
    events_aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="two")
    await until(lambda: _fetched(daemon, "changed") == 1, "a fetch that sees the new version", timeout=5)
    assert await daemon.get("v") == (200, "two")
    assert events_aws.calls["ListSecrets"] == listings


async def test_an_event_never_brings_back_a_revoked_secret(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("v") == (200, "one")
    events_aws.fail["GetSecretValue"] = "AccessDeniedException"  # the sidecar's role lost the secret
    publish(events_aws, topic, label_updated("airflow/variables/v"))
    await until(lambda: _fetched(daemon, "failed") == 1, "the refused fetch")
    status, _ = await daemon.get("v")
    assert status == 503  # never the old value, fresh or stale


async def test_a_creation_announced_for_a_name_held_as_a_miss_is_served_at_once(events_aws, topic, start_daemon):
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("new_one") == (404, None)
    events_aws.client().create_secret(Name="airflow/variables/new_one", SecretString="created")
    publish(events_aws, topic, api_call("CreateSecret", {"name": "airflow/variables/new_one"}))
    await until(lambda: _fetched(daemon, "changed") == 1, "the fetch the event asked for")
    assert await daemon.get("new_one") == (200, "created")


async def test_a_clean_stop_leaves_no_queue_and_no_subscription(events_aws, topic, start_daemon):
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    sqs, sns = events_aws.client("sqs"), events_aws.client("sns")
    assert len(sqs.list_queues().get("QueueUrls", [])) == 1
    assert len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1
    await daemon.stop()
    assert sqs.list_queues().get("QueueUrls", []) == []
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


async def test_a_killed_daemons_queue_is_swept_by_the_next_start(events_aws, topic, start_daemon):
    sqs, sns = events_aws.client("sqs"), events_aws.client("sns")
    old = f"{time.time() - STALE_HEARTBEAT - 60:.0f}"
    dead = sqs.create_queue(QueueName="airflow-secrets-sidecar-pod-x-dead00", tags={HEARTBEAT_TAG: old})["QueueUrl"]
    alive = sqs.create_queue(
        QueueName="airflow-secrets-sidecar-pod-y-live00", tags={HEARTBEAT_TAG: f"{time.time():.0f}"}
    )["QueueUrl"]
    other = sqs.create_queue(QueueName="someone-elses-queue")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=dead_arn)

    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    urls = set(sqs.list_queues()["QueueUrls"])
    assert dead not in urls and {alive, other, daemon.events._queue.url} <= urls
    endpoints = [s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]]
    assert dead_arn not in endpoints and len(endpoints) == 1


async def test_mode_sqs_reads_the_operators_queue_fed_by_an_eventbridge_rule(events_aws, start_daemon):
    sqs, bridge = events_aws.client("sqs"), events_aws.client("events")
    url = sqs.create_queue(QueueName="airflow-secrets-sidecar-vm")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["aws.secretsmanager"], "detail-type": ["Secret Label Updated"]}
    bridge.put_rule(Name="secret-changes", EventPattern=json.dumps(pattern))
    bridge.put_targets(Rule="secret-changes", Targets=[{"Id": "sidecar", "Arn": arn}])
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sqs", events_queue_url=url)
    assert await daemon.get("v") == (200, "one")

    events_aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="two")
    event = label_updated("airflow/variables/v")
    entry = {"Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(event["detail"])}
    assert bridge.put_events(Entries=[entry])["FailedEntryCount"] == 0
    await until(lambda: _fetched(daemon, "changed") == 1, "the fetch the event asked for")
    assert await daemon.get("v") == (200, "two")
    await daemon.stop()
    assert url in sqs.list_queues()["QueueUrls"]  # the operator's queue stays


@pytest.mark.parametrize("code", ["InternalError", "ThrottlingException"])
async def test_a_failing_queue_leaves_lookups_alone_and_the_listing_takes_over(events_aws, topic, start_daemon, code):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic, list_interval=2)
    assert daemon.events.trusted()
    events_aws.fail["ReceiveMessage"] = code
    publish(events_aws, topic, label_updated("airflow/variables/other"))  # ends the long poll under way
    await until(lambda: _upstream_errors(daemon, "ReceiveMessage") >= 1, "a failed receive")
    assert sample_value(daemon.metrics, "sidecar_events_consumer_up") == 0
    assert await daemon.get("v") == (200, "one")
    listings = events_aws.calls["ListSecrets"]
    daemon._timer.advance(61)  # past FALLBACK_AFTER of failed receives, on the daemon's clock
    await until(lambda: events_aws.calls["ListSecrets"] > listings, "the listing at its own interval", timeout=40)
    assert not daemon.events.trusted()


async def test_a_hanging_queue_leaves_lookups_alone_and_the_backstop_listing_finds_changes(
    events_aws, topic, start_daemon, proxy, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", proxy.endpoint)  # SQS through the fault layer
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic, events_list_interval=2)
    proxy.set("ReceiveMessage", "blackhole")  # from the next receive on: held, never answered
    publish(events_aws, topic, label_updated("airflow/variables/other"))  # ends the long poll under way
    await until(lambda: proxy.held() >= 1, "a receive held by the black hole")
    events_aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="two")  # its event is lost
    answers = await ask_until(daemon, "v", "two", within=10.0)  # by the backstop listing
    assert set(answers) <= {(200, "one"), (200, "two")}  # every lookup answered meanwhile
    assert sample_value(daemon.metrics, "sidecar_listing_unannounced_changes_total") >= 1
    proxy.clear()


async def test_an_announced_change_the_backstop_listing_finds_an_hour_later_keeps_events_trusted(
    events_aws, topic, start_daemon
):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("v") == (200, "one")
    events_aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="two")
    publish(events_aws, topic, label_updated("airflow/variables/v"))
    await until(lambda: _fetched(daemon, "changed") == 1, "the event's fetch")
    daemon._timer.advance(DEFAULTS["events_list_interval"] * 1.1)  # the next backstop listing, at the latest
    await daemon.warmup.list_once()
    assert sample_value(daemon.metrics, "sidecar_listing_unannounced_changes_total") == 0
    assert daemon.events.trusted()


async def test_an_idle_daemons_long_poll_ends_empty_not_in_a_read_timeout(events_aws, topic, start_daemon):
    """SQS holds an empty receive for the whole LONG_POLL: the client must wait longer than that."""
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    await until(lambda: _upstream_ok(daemon, "ReceiveMessage") >= 1, "an empty receive", timeout=LONG_POLL + 15)
    assert _upstream_errors(daemon, "ReceiveMessage") == 0
    assert sample_value(daemon.metrics, "sidecar_events_consumer_up") == 1 and daemon.events.trusted()


async def test_a_change_no_event_announced_sends_the_listing_back_to_its_interval(events_aws, topic, start_daemon):
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    assert await daemon.get("v") == (200, "one")
    assert daemon.events.trusted()
    events_aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="two")  # no event
    await daemon.warmup.list_once()
    assert not daemon.events.trusted()
    assert sample_value(daemon.metrics, "sidecar_listing_unannounced_changes_total") == 1
    assert await daemon.get("v") == (200, "two")


def _fetched(daemon: Daemon, outcome: str) -> float:
    value = sample_value(daemon.metrics, "sidecar_event_fetches_total", {"outcome": outcome})
    return value or 0.0


def _upstream_errors(daemon: Daemon, api: str) -> float:
    """Failed calls, throttled ones included."""
    metrics = daemon.metrics
    return sum(
        sample_value(metrics, "sidecar_upstream_calls_total", {"api": api, "outcome": outcome}) or 0.0
        for outcome in ("error", "throttled")
    )


# --- check: the topic, the queue and the permissions, for real ---


def _check_env(aws: AwsEmulator, topic: str) -> dict[str, str]:
    from tests.test_cli import emulator_kwargs, sidecar_env

    return sidecar_env(
        SIDECAR_TOKEN=TOKEN,
        SIDECAR_BACKEND_KWARGS=emulator_kwargs(aws.endpoint),
        SIDECAR_EVENTS="sns",
        SIDECAR_EVENTS_TOPIC_ARN=topic,
    )


def test_check_goes_through_a_whole_queues_life_and_leaves_nothing(events_aws, topic):
    from tests.test_cli import run_cli

    result = run_cli("check", env=_check_env(events_aws, topic))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"events: a queue subscribed to {topic}, received from and deleted"
    assert events_aws.client("sqs").list_queues().get("QueueUrls", []) == []
    assert events_aws.client("sns").list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


def test_check_names_a_refused_subscription_and_leaves_no_queue(events_aws, topic, proxy, monkeypatch):
    from tests.test_cli import run_cli

    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", proxy.endpoint)  # SNS through the fault layer
    proxy.set("Subscribe", "denied")
    refused = run_cli("check", env=_check_env(events_aws, topic))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    last = refused.stdout.splitlines()[-1]
    assert last.startswith("events: AWS Subscribe failed: AccessDenied (the sidecar's IAM role lacks a permission")
    assert last.endswith("the events' policy: docs/events.md)") and "Traceback" not in refused.stderr
    assert events_aws.client("sqs").list_queues().get("QueueUrls", []) == []  # the queue made first is gone


def test_an_answer_botocore_cannot_parse_is_one_clear_line_quoting_nothing(events_aws, topic):
    """botocore's ResponseParserError quotes the body it could not read (a GetSecretValue's may hold
    the value): it is a transient AWS failure like any other, with none of that body kept."""
    from tests.test_cli import run_cli

    events_aws.fail["Subscribe"] = "SomethingElse"  # a JSON body where SNS answers XML
    result = run_cli("check", env=_check_env(events_aws, topic))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("events: AWS Subscribe failed: ResponseParserError")
    assert "SomethingElse" not in result.stdout + result.stderr and "Traceback" not in result.stderr


# --- the operator's one-time setup: deploy/events/cloudformation.yaml ---

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "events" / "cloudformation.yaml"
SNS_APIS = {"Subscribe", "Unsubscribe", "ListSubscriptionsByTopic"}
STORE_APIS = {"GetSecretValue", "BatchGetSecretValue", "ListSecrets"}
IAM_ACTION = {"DeleteMessageBatch": "DeleteMessage"}  # the batch call needs the single call's permission


def template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.loads(TEMPLATE.read_text(encoding="utf-8"))


def test_the_setup_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_setup_rules_send_exactly_the_events_the_daemon_reads():
    resources = template()["Resources"]
    change = resources["ChangeRule"]["Properties"]["EventPattern"]
    read = {pair for store in EVENTS.values() for pair in store if pair[1] != "AWS API Call via CloudTrail"}
    assert {(s, t) for s in change["source"] for t in change["detail-type"]} >= read
    assert set(change["detail-type"]) == {t for _, t in read}
    calls = resources["CloudTrailRule"]["Properties"]["EventPattern"]["detail"]["eventName"]
    assert set(calls) == CHANGING_CALLS
    assert template()["Parameters"]["QueuePrefix"]["Default"] == DEFAULTS["events_queue_prefix"]


async def test_every_call_a_daemon_makes_is_in_the_setup_policy_and_marked_as_its_own(events_aws, topic, start_daemon):
    sqs, sns = events_aws.client("sqs"), events_aws.client("sns")
    old = f"{time.time() - STALE_HEARTBEAT - 60:.0f}"
    dead = sqs.create_queue(QueueName="airflow-secrets-sidecar-pod-x-dead00", tags={HEARTBEAT_TAG: old})["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=dead_arn)
    events_aws.put("airflow/variables/v", "one")
    daemon = await start_daemon(events="sns", events_topic_arn=topic)
    daemon._timer.advance(HEARTBEAT_EVERY + 1)
    publish(events_aws, topic, label_updated("airflow/variables/v"))  # a receive returns: then the heartbeat
    await until(lambda: _upstream_ok(daemon, "TagQueue") == 1, "the heartbeat")
    await daemon.stop()

    made = {
        sample.labels["api"]
        for sample in metric_samples(daemon.metrics)
        if sample.name == "sidecar_upstream_calls_total" and sample.value > 0
    }
    assert {"CreateQueue", "Subscribe", "ReceiveMessage", "DeleteMessageBatch", "TagQueue", "Unsubscribe"} <= made
    # Every call the daemon made says whose it is, as AWS's agent marks its calls (CloudTrail's userAgent).
    mark = f"airflow-secrets-sidecar/{sidecar.__version__}"
    for api in made:
        assert all(mark in agent for agent in events_aws.user_agents[api]), (api, events_aws.user_agents[api])
    needed = {f"{'sns' if api in SNS_APIS else 'sqs'}:{IAM_ACTION.get(api, api)}" for api in made - STORE_APIS}
    statements = template()["Resources"]["SidecarEventsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allowed = {
        action for s in statements for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert needed <= allowed, needed - allowed


def _upstream_ok(daemon: Daemon, api: str) -> float:
    value = sample_value(daemon.metrics, "sidecar_upstream_calls_total", {"api": api, "outcome": "ok"})
    return value or 0.0
