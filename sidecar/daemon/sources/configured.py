"""The configured source: Secrets Manager or Parameter Store, over one AWS client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sidecar import SECRETSMANAGER, SSM
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.aws import Caller, open_client
from sidecar.daemon.sources.base import Source
from sidecar.daemon.sources.quotas import RateLimits
from sidecar.daemon.sources.secretsmanager import SecretsManagerSource
from sidecar.daemon.sources.ssm import ParameterStoreSource

SOURCES: dict[str, type[SecretsManagerSource] | type[ParameterStoreSource]] = {
    SECRETSMANAGER: SecretsManagerSource,
    SSM: ParameterStoreSource,
}


def make_source(settings: Settings, metrics: Metrics, client: Any) -> Source:
    """The configured source over `client`: an AWS client, or an object with the same methods
    (the fleet simulation's store)."""
    # Paced on the event loop's clock: real time in a daemon, simulated time in the simulation.
    limits = RateLimits(settings.aws_quota_share, asyncio.get_running_loop().time)
    return SOURCES[settings.source](client, Caller(metrics, settings.max_upstream, limits))


@asynccontextmanager
async def open_source(settings: Settings, metrics: Metrics) -> AsyncIterator[Source]:
    """The configured source over its own AWS client, closed on exit."""
    async with open_client(SOURCES[settings.source].service, settings.store, settings.max_upstream) as client:
        yield make_source(settings, metrics, client)
