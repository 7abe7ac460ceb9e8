"""What every source gives: a value per name, a listing of names with their versions, batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sidecar.daemon.sources.aws import UpstreamError


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
