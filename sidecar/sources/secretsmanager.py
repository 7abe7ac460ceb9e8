"""AWS Secrets Manager: GetSecretValue, ListSecrets and BatchGetSecretValue."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiobotocore.client import AioBaseClient

from sidecar.sources.aws import Caller, UpstreamError

log = logging.getLogger(__name__)

# What the provider backend treats as "no such secret": it returns None for each of these.
NOT_FOUND_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "InvalidParameterException",
        "InvalidRequestException",
        "DecryptionFailure",
    }
)
BATCH_SIZE = 20  # BatchGetSecretValue takes at most 20 names per call


class SecretsManagerSource:
    service = "secretsmanager"
    list_permission = "secretsmanager:ListSecrets"

    def __init__(self, client: AioBaseClient, caller: Caller) -> None:
        self._client = client
        self._call = caller
        self._batch_denied = False

    async def get(self, name: str) -> str | None:
        response = await self._call(
            "GetSecretValue", lambda: self._client.get_secret_value(SecretId=name), NOT_FOUND_CODES
        )
        # Binary secrets have no SecretString: like the provider, they are not served.
        return None if response is None else response.get("SecretString")

    async def list_names(self, prefix: str) -> dict[str, str | None]:
        """Every secret name that starts with `prefix` (ListSecrets carries no values)."""
        names: dict[str, str | None] = {}
        request: dict[str, Any] = {"Filters": [{"Key": "name", "Values": [prefix]}], "MaxResults": 100}
        while True:
            page = await self._call("ListSecrets", lambda request=request: self._client.list_secrets(**request))
            assert page is not None
            names.update((s["Name"], None) for s in page.get("SecretList", []) if s["Name"].startswith(prefix))
            if not page.get("NextToken"):
                return names
            request = {**request, "NextToken": page["NextToken"]}

    async def get_many(self, names: list[str]) -> dict[str, str | None]:
        """Values of `names`, 20 per call; a name AWS reports as missing maps to None.

        Names left out of the answer (per-secret errors other than "not found") are for the
        caller to fetch one by one. If IAM denies BatchGetSecretValue, every name is fetched
        with GetSecretValue from then on.
        """
        found: dict[str, str | None] = {}
        for start in range(0, len(names), BATCH_SIZE):
            batch = names[start : start + BATCH_SIZE]
            if not self._batch_denied:
                try:
                    found.update(await self._batch_get(batch))
                    continue
                except UpstreamError as error:
                    if error.transient:
                        raise
                    self._batch_denied = True
                    log.warning(
                        "BatchGetSecretValue was refused (%s): fetching secrets one by one instead. Allow "
                        "secretsmanager:BatchGetSecretValue on the sidecar's role to cut AWS calls.",
                        error.code,
                    )
            values = await asyncio.gather(*(self.get(name) for name in batch))
            found.update(zip(batch, values, strict=True))
        return found

    async def _batch_get(self, batch: list[str]) -> dict[str, str | None]:
        response = await self._call(
            "BatchGetSecretValue", lambda: self._client.batch_get_secret_value(SecretIdList=batch)
        )
        assert response is not None
        found: dict[str, str | None] = {s["Name"]: s.get("SecretString") for s in response.get("SecretValues", [])}
        for error in response.get("Errors", []):
            if error.get("ErrorCode") in NOT_FOUND_CODES:
                found[error["SecretId"]] = None
        return found
