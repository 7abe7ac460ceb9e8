"""AWS's change events, pushed to the daemon through SQS: each names a secret to fetch again.

`open_events` builds the consumer of the configured mode (docs/events.md) over SQS and SNS clients
of its own, which `stack` closes; the consumer's `run` sets up and tears down the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from sidecar.daemon.answers.names import Names
from sidecar.daemon.cache.cache import Cache
from sidecar.daemon.events.consumer import Consumer
from sidecar.daemon.events.hints import Reader
from sidecar.daemon.events.queue import LONG_POLL, OwnQueue, Queue
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.aws import Caller, open_client
from sidecar.daemon.sources.quotas import RateLimits

CALLS_IN_FLIGHT = 4  # a long poll, a delete, a heartbeat, a set-up call


async def open_events(
    settings: Settings, cache: Cache, metrics: Metrics, stack: contextlib.AsyncExitStack, timer: Callable[[], float]
) -> Consumer:
    queue = await open_queue(settings, metrics, stack)
    prefixes = Names(settings.store).listed_prefixes()
    return Consumer(queue, Reader(settings.source, prefixes), cache, metrics, timer=timer)


async def open_queue(settings: Settings, metrics: Metrics, stack: contextlib.AsyncExitStack) -> Queue:
    """The queue of SIDECAR_EVENTS' mode, over SQS (and SNS) clients that `stack` closes."""
    store = settings.store
    call = Caller(metrics, CALLS_IN_FLIGHT, RateLimits(settings.aws_quota_share, asyncio.get_running_loop().time))
    # SQS holds an empty receive for the whole long poll: the read waits longer than that.
    sqs = await stack.enter_async_context(
        open_client("sqs", store, CALLS_IN_FLIGHT, store_service=False, read_timeout=LONG_POLL + 10)
    )
    if settings.events == "sqs":
        assert settings.events_queue_url is not None
        return Queue(sqs, call, settings.events_queue_url)
    assert settings.events_topic_arn is not None
    sns = await stack.enter_async_context(open_client("sns", store, CALLS_IN_FLIGHT, store_service=False))
    return OwnQueue(
        sqs,
        sns,
        call,
        topic_arn=settings.events_topic_arn,
        prefix=settings.events_queue_prefix,
        identity=settings.events_identity or socket.gethostname(),
        prefixes=Names(settings.store).listed_prefixes(),
    )


async def check_events(settings: Settings) -> str:
    """What `check` proves of SIDECAR_EVENTS: mode sns goes through a whole queue's life (made,
    subscribed, received from, tagged, unsubscribed, deleted), mode sqs reads the queue's
    attributes. Raises UpstreamError naming the call that failed."""
    async with contextlib.AsyncExitStack() as stack:
        queue = await open_queue(settings, Metrics(), stack)
        if isinstance(queue, OwnQueue):
            await queue.open()
            try:
                await queue.receive(wait=0)
                await queue.heartbeat()
            finally:
                await queue.close()
            return f"events: a queue subscribed to {settings.events_topic_arn}, received from and deleted"
        return f"events: queue {await queue.arn(queue.url)} readable"
