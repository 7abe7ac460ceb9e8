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
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.daemon.metrics import Metrics
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.aws import Caller, UpstreamError, open_client
from sidecar.daemon.sources.quotas import RateLimits

__all__ = ["Listed", "Source", "UpstreamError", "open_source"]


@dataclass(frozen=True, slots=True)
class Listed:
    """One name in a listing."""

    version: str | None  # changes whenever the value does: AWSCURRENT's version id, a parameter's Version
    value: str | None = None  # the value, where the listing carries it (Parameter Store)


class Source(Protocol):
    service: str  # the AWS service name of its client
    list_permission: str  # the IAM action that listing needs, for the log line when it is denied

    async def get(self, name: str) -> str | None: ...

    async def list_secrets(self, prefixes: list[str]) -> dict[str, Listed]:
        """Every name under any of `prefixes` (each ends with the separator)."""
        ...

    async def get_many(self, names: list[str], *, ahead: bool = False) -> dict[str, str | UpstreamError | None]:
        """The outcome for each name: its value, None (no such secret), or its own failure.

        Raises UpstreamError when the whole call fails. `ahead`: the names are only wanted ahead
        of use (warm-up), so a throttled batch API is not worked around with one call per name.
        """
        ...


@asynccontextmanager
async def open_source(settings: Settings, metrics: Metrics, client: Any = None) -> AsyncIterator[Source]:
    """The configured source over one AWS client: its own, or `client` (an object with the same
    methods, such as the fleet simulation's store), which stays the caller's to close."""
    if settings.source == "ssm":
        from sidecar.daemon.sources.ssm import ParameterStoreSource as source_class
    else:
        from sidecar.daemon.sources.secretsmanager import SecretsManagerSource as source_class
    # Paced on the event loop's clock: real time in a daemon, simulated time in the simulation.
    limits = RateLimits(settings.aws_quota_share, asyncio.get_running_loop().time)
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(
                open_client(source_class.service, settings.store, settings.max_upstream)
            )
        yield source_class(client, Caller(metrics, settings.max_upstream, limits))
