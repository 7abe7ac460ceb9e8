"""The SQS queue a daemon reads events from, and in mode `sns` its whole life.

An SQS message goes to one consumer, so a fleet cannot share one queue: in mode `sns` each daemon
creates its own (the name prefix, this host's identity and a random suffix: AWS refuses a deleted
queue's name for 60 s, which a restarted container would meet at once), with SQS-managed
encryption and a short retention; sets its policy (only the topic may send) before it subscribes
it to the topic with raw delivery and a filter policy on the configured prefixes; tags it with a
heartbeat while it runs; and on a clean stop unsubscribes and deletes it. A daemon that was killed
leaves its queue behind: at start each daemon checks `SWEEP_SAMPLE` queues of the prefix at random
and deletes those whose heartbeat is older than `STALE_HEARTBEAT`, with their subscriptions. In
mode `sqs` the daemon reads a queue the operator made, alone (docs/events.md), and changes nothing
on it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from sidecar.daemon.sources.aws import Caller
from sidecar.daemon.sources.base import UpstreamError

log = logging.getLogger(__name__)

RETENTION = 3600  # s: an event older than the listing's backstop is worth nothing
LONG_POLL = 20  # s: SQS's longest wait; each empty receive is one request
HEARTBEAT_EVERY = 300.0  # s
STALE_HEARTBEAT = 3 * 3600.0  # s: a queue not tagged for this long belongs to a dead daemon
HEARTBEAT_TAG = "sidecar-heartbeat"
QUEUE_NAME_MAX = 80
SWEEP_SAMPLE = 20  # queues of the prefix whose heartbeat one start checks
MAX_MESSAGES = 10  # SQS's most per receive


def queue_name(prefix: str, identity: str, suffix: str | None = None) -> str:
    """prefix + identity + a random suffix, within SQS's 80 characters of [A-Za-z0-9_-]."""
    suffix = suffix or secrets.token_hex(3)
    identity = re.sub(r"[^A-Za-z0-9_-]", "-", identity)
    room = QUEUE_NAME_MAX - len(prefix) - len(suffix) - 1
    return f"{prefix}{identity[:room]}-{suffix}"


def filter_policy(prefixes: list[str]) -> str:
    """SNS's body filter: events whose `detail.name` is under a prefix, and those with no
    `detail.name` (CloudTrail's calls, whose secretId may be an ARN: the daemon checks their names
    itself). Values in one list are alternatives, so this needs no `$or`."""
    names = [{"exists": False}, *({"prefix": prefix} for prefix in prefixes)]
    return json.dumps({"detail": {"name": names}}, separators=(",", ":"))


def queue_policy(queue_arn: str, topic_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "OnlyTheTopic",
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
    )


class Queue:
    """Receives and deletes messages of one queue URL (mode `sqs`: the operator's)."""

    def __init__(self, sqs: Any, call: Caller, url: str) -> None:
        self._sqs = sqs
        self._call = call
        self.url = url

    async def receive(self, wait: int = LONG_POLL) -> list[dict[str, Any]]:
        """Up to ten messages, long-polling `wait` seconds; raises UpstreamError."""
        answer = await self._call(
            "ReceiveMessage",
            lambda: self._sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=wait
            ),
        )
        return list((answer or {}).get("Messages", []))

    async def delete(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        await self._call(
            "DeleteMessageBatch", lambda: self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
        )

    async def arn(self, url: str) -> str:
        attributes = await self._call(
            "GetQueueAttributes", lambda: self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        )
        return str(attributes["Attributes"]["QueueArn"])

    async def open(self) -> None:
        """Mode `sqs`: nothing to make."""

    async def heartbeat(self) -> None:
        """Mode `sqs`: the operator's queue carries no heartbeat."""

    async def close(self) -> None:
        """Mode `sqs`: the operator's queue stays."""


class OwnQueue(Queue):
    """Mode `sns`: this daemon's queue, made at start, subscribed to the topic, gone at a clean stop."""

    def __init__(
        self,
        sqs: Any,
        sns: Any,
        call: Caller,
        *,
        topic_arn: str,
        prefix: str,
        identity: str,
        prefixes: list[str],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(sqs, call, url="")
        self._sns = sns
        self._topic_arn = topic_arn
        self._prefix = prefix
        self._name = queue_name(prefix, identity)
        self._prefixes = prefixes
        self._wall_clock = wall_clock
        self.subscription_arn: str | None = None

    async def open(self) -> None:
        await self.sweep()
        created = await self._call(
            "CreateQueue",
            lambda: self._sqs.create_queue(
                QueueName=self._name,
                Attributes={"MessageRetentionPeriod": str(RETENTION), "SqsManagedSseEnabled": "true"},
                tags={HEARTBEAT_TAG: self._stamp()},
            ),
        )
        self.url = created["QueueUrl"]
        try:
            queue_arn = await self.arn(self.url)
            # The policy first: a subscription to a queue the topic may not send to loses events.
            await self._call(
                "SetQueueAttributes",
                lambda: self._sqs.set_queue_attributes(
                    QueueUrl=self.url, Attributes={"Policy": queue_policy(queue_arn, self._topic_arn)}
                ),
            )
            subscribed = await self._call(
                "Subscribe",
                lambda: self._sns.subscribe(
                    TopicArn=self._topic_arn,
                    Protocol="sqs",
                    Endpoint=queue_arn,
                    Attributes={
                        "RawMessageDelivery": "true",
                        "FilterPolicyScope": "MessageBody",
                        "FilterPolicy": filter_policy(self._prefixes),
                    },
                    ReturnSubscriptionArn=True,
                ),
            )
        except BaseException:
            await self.close()
            raise
        self.subscription_arn = subscribed["SubscriptionArn"]
        log.info("events: queue %s subscribed to %s", self._name, self._topic_arn)

    async def heartbeat(self) -> None:
        await self._call(
            "TagQueue", lambda: self._sqs.tag_queue(QueueUrl=self.url, Tags={HEARTBEAT_TAG: self._stamp()})
        )

    async def close(self) -> None:
        """Unsubscribe first (a topic must not send to a queue that is gone), then delete the queue."""
        if self.subscription_arn is not None:
            arn, self.subscription_arn = self.subscription_arn, None
            await self._call("Unsubscribe", lambda: self._sns.unsubscribe(SubscriptionArn=arn))
        if self.url:
            url, self.url = self.url, ""
            await self._call("DeleteQueue", lambda: self._sqs.delete_queue(QueueUrl=url))
            log.info("events: queue %s deleted", self._name)

    async def sweep(self) -> int:
        """Delete the queues of the prefix whose heartbeat is stale, and their subscriptions;
        return how many. A failure is logged: it must not keep the daemon from starting."""
        try:
            listed = await self._call("ListQueues", lambda: self._sqs.list_queues(QueueNamePrefix=self._prefix))
            urls = (listed or {}).get("QueueUrls", [])
            # A fleet's every start must not ask for every queue's tags: a sample each time finds
            # a dead daemon's queue within a few starts, and until then it costs nothing but room.
            urls = random.sample(urls, min(len(urls), SWEEP_SAMPLE))
            stale = [url for url in urls if await self._is_stale(url)]
            if stale:
                await self._unsubscribe_all(stale)
            for url in stale:
                await self._call("DeleteQueue", lambda url=url: self._sqs.delete_queue(QueueUrl=url))
        except UpstreamError as error:
            log.warning("events: could not sweep dead daemons' queues (%s: %s)", error.code, error.hint)
            return 0
        if stale:
            log.info("events: deleted %d queues of dead daemons (no heartbeat for %.0fs)", len(stale), STALE_HEARTBEAT)
        return len(stale)

    async def _is_stale(self, url: str) -> bool:
        tags = await self._call("ListQueueTags", lambda: self._sqs.list_queue_tags(QueueUrl=url))
        stamp = (tags or {}).get("Tags", {}).get(HEARTBEAT_TAG)
        try:
            return self._wall_clock() - float(stamp) > STALE_HEARTBEAT
        except (TypeError, ValueError):
            return False  # not ours, or no heartbeat yet: leave it

    async def _unsubscribe_all(self, urls: list[str]) -> None:
        arns = {await self.arn(url) for url in urls}
        paging: dict[str, str] = {}
        while True:
            page = await self._call(
                "ListSubscriptionsByTopic",
                lambda paging=paging: self._sns.list_subscriptions_by_topic(TopicArn=self._topic_arn, **paging),
            )
            for subscription in (page or {}).get("Subscriptions", []):
                if subscription.get("Endpoint") in arns:
                    arn = subscription["SubscriptionArn"]
                    await self._call("Unsubscribe", lambda arn=arn: self._sns.unsubscribe(SubscriptionArn=arn))
            if not (page or {}).get("NextToken"):
                return
            paging = {"NextToken": page["NextToken"]}

    def _stamp(self) -> str:
        return f"{self._wall_clock():.0f}"
