"""AWS's change events, pushed to the daemon through SQS: each names a secret to fetch again.

`open_events` builds the consumer of the configured mode (docs/events.md) over SQS and SNS clients
of its own, which `stack` closes; the consumer's `run` sets up and tears down the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from sidecar.daemon.cache import Cache
from sidecar.daemon.events.consumer import Consumer
from sidecar.daemon.events.hints import Reader
from sidecar.daemon.events.queue import OwnQueue, Queue
from sidecar.daemon.lookup.names import Names
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.aws import Caller, open_client
from sidecar.daemon.sources.quotas import RateLimits

__all__ = ["Consumer", "open_events"]

CALLS_IN_FLIGHT = 4  # a long poll, a delete, a heartbeat, a set-up call


async def open_events(
    settings: Settings, cache: Cache, metrics: Metrics, stack: contextlib.AsyncExitStack, timer: Callable[[], float]
) -> Consumer:
    store = settings.store
    call = Caller(metrics, CALLS_IN_FLIGHT, RateLimits(settings.aws_quota_share, asyncio.get_running_loop().time))
    sqs = await stack.enter_async_context(open_client("sqs", store, CALLS_IN_FLIGHT, store_service=False))
    prefixes = Names(settings.store).listed_prefixes()
    queue: Queue
    if settings.events == "sns":
        assert settings.events_topic_arn is not None
        sns = await stack.enter_async_context(open_client("sns", store, CALLS_IN_FLIGHT, store_service=False))
        queue = OwnQueue(
            sqs,
            sns,
            call,
            topic_arn=settings.events_topic_arn,
            prefix=settings.events_queue_prefix,
            identity=settings.events_identity or socket.gethostname(),
            prefixes=prefixes,
        )
    else:
        assert settings.events_queue_url is not None
        queue = Queue(sqs, call, settings.events_queue_url)
    return Consumer(queue, Reader(settings.source, prefixes), cache, metrics, timer=timer)
