"""Secret stores: each fetches names from AWS and knows nothing of Airflow.

A source answers `get(name)` with the secret's string, or None when AWS says the name does not
exist or cannot be served as a string; any other failure raises `UpstreamError`. Its listing
gives, for each name, what moves when the secret changes (its version) and, where the listing
carries it, the value.
"""

from __future__ import annotations

import asyncio
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

__all__ = ["Listed", "Source", "UpstreamError", "make_source", "open_source"]

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
