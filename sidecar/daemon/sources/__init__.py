"""Secret stores: each fetches names from AWS and knows nothing of Airflow.

A source answers `get(name)` with the secret's string, or None when AWS says the name does not
exist or cannot be served as a string; any other failure raises `UpstreamError`. Its listing
gives, for each name, what moves when the secret changes (its version) and, where the listing
carries it, the value.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sidecar import SECRETSMANAGER, SSM
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.aws import Caller, UpstreamError, open_client
from sidecar.daemon.sources.base import Listed, Source
from sidecar.daemon.sources.quotas import RateLimits
from sidecar.daemon.sources.secretsmanager import SecretsManagerSource
from sidecar.daemon.sources.ssm import ParameterStoreSource

__all__ = ["Listed", "Source", "UpstreamError", "open_source"]

SOURCES: dict[str, type[SecretsManagerSource] | type[ParameterStoreSource]] = {
    SECRETSMANAGER: SecretsManagerSource,
    SSM: ParameterStoreSource,
}


@asynccontextmanager
async def open_source(settings: Settings, metrics: Metrics, client: Any = None) -> AsyncIterator[Source]:
    """The configured source over one AWS client: its own, or `client` (an object with the same
    methods, such as the fleet simulation's store), which stays the caller's to close."""
    source_class = SOURCES[settings.source]
    # Paced on the event loop's clock: real time in a daemon, simulated time in the simulation.
    limits = RateLimits(settings.aws_quota_share, asyncio.get_running_loop().time)
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(
                open_client(source_class.service, settings.store, settings.max_upstream)
            )
        yield source_class(client, Caller(metrics, settings.max_upstream, limits))
