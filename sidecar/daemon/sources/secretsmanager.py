"""AWS Secrets Manager: GetSecretValue, ListSecrets and BatchGetSecretValue."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiobotocore.client import AioBaseClient

from sidecar.daemon.sources.aws import Caller
from sidecar.daemon.sources.base import TRANSIENT_CODES, Listing, UpstreamError

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
BATCH_RETRY_AFTER = 3600.0  # seconds before a refused BatchGetSecretValue is tried again
# Seconds before a throttled BatchGetSecretValue (100/s for the account) is tried again; meanwhile
# GetSecretValue (10,000/s) fetches the names one by one.
BATCH_THROTTLED_FOR = 60.0


class SecretsManagerSource:
    service = "secretsmanager"
    list_permission = "secretsmanager:ListSecrets"

    def __init__(self, client: AioBaseClient, caller: Caller) -> None:
        self._client = client
        self._call = caller
        self._timer = asyncio.get_running_loop().time  # simulated time under tests/fleet.py
        self._batch_paused_until: float | None = None  # BatchGetSecretValue denied or throttled: one by one
        self._batch_throttled = False  # the pause is AWS's throttling: ask one name at a time
        self._versions: dict[str, str | None] = {}  # the last listing's

    async def get(self, name: str) -> str | None:
        # AWSCURRENT is what AWS serves without a label too; moto, after UpdateSecretVersionStage
        # moved it, serves the version it stored as its default unless asked by label.
        response = await self._call(
            "GetSecretValue",
            lambda: self._client.get_secret_value(SecretId=name, VersionStage="AWSCURRENT"),
            NOT_FOUND_CODES,
        )
        # Binary secrets have no SecretString: like the provider, they are not served.
        return None if response is None else response.get("SecretString")

    async def list_secrets(self, prefixes: list[str]) -> Listing:
        """Every secret under `prefixes`, with the version AWSCURRENT is on (ListSecrets carries no
        values). One paginated listing for all: the `name` filter is a case-sensitive prefix match
        and a secret matches if any of its values does (at most 10: one prefix per kind here)."""
        versions: dict[str, str | None] = {}
        request: dict[str, Any] = {"Filters": [{"Key": "name", "Values": prefixes}], "MaxResults": 100}
        while True:
            page = await self._call("ListSecrets", lambda request=request: self._client.list_secrets(**request))
            assert page is not None
            for entry in page.get("SecretList", []):
                name = entry["Name"]
                if name.startswith(tuple(prefixes)):
                    versions[name] = _current_version(entry)
            if not page.get("NextToken"):
                self._versions = versions
                return Listing(versions)
            request = {**request, "NextToken": page["NextToken"]}

    async def get_many(self, names: list[str], *, ahead: bool = False) -> dict[str, str | UpstreamError | None]:
        """The outcome for each of `names`, 20 per call: its value, None, or its own error.

        Raises UpstreamError when a whole call fails transiently. If IAM denies
        BatchGetSecretValue, names are fetched with GetSecretValue for an hour, then it is tried
        again; if AWS throttles it, for a minute, unless the names are only wanted `ahead` of use
        (warm-up): then the throttling is raised, and each name waits for its first lookup.
        """
        found: dict[str, str | UpstreamError | None] = {}
        for start in range(0, len(names), BATCH_SIZE):
            batch = names[start : start + BATCH_SIZE]
            if self._batch_paused_until is None or self._timer() >= self._batch_paused_until:
                try:
                    found.update(await self._batch_get(batch))
                    continue
                except UpstreamError as error:
                    if error.transient and not error.throttled:
                        raise
                    self._pause_batches(error)
                    if error.throttled and ahead:
                        raise
            elif self._batch_throttled and ahead:
                raise UpstreamError("BatchGetSecretValue", "ThrottlingException", True, "paused after throttling")
            # While AWS throttles the account, one call at a time: no burst of 20, and no connections
            # opened to AWS beyond the one in use.
            found.update(await self._get_each(batch, one_at_a_time=self._batch_throttled))
        return found

    async def _batch_get(self, batch: list[str]) -> dict[str, str | UpstreamError | None]:
        response = await self._call(
            "BatchGetSecretValue", lambda: self._client.batch_get_secret_value(SecretIdList=batch)
        )
        assert response is not None
        if self._batch_paused_until is not None:
            self._batch_paused_until = None
            log.info("BatchGetSecretValue works again: secrets are fetched 20 per call")
        found: dict[str, str | UpstreamError | None] = {}
        # Each answer under the name as asked, not AWS's copy of it: the cache, the listing and the
        # refresh queue then share one string per name.
        asked = {name: name for name in batch}
        for secret in response.get("SecretValues", []):
            # BatchGetSecretValue takes no staging label. An answer on another version than the one
            # the last listing named is asked again by label: on AWS, the listing lagged a newer
            # change; moto's batch ignores a label moved by UpdateSecretVersionStage.
            name = asked.get(secret["Name"], secret["Name"])
            version = self._versions.get(name)
            if version is None or version == secret.get("VersionId"):
                found[name] = secret.get("SecretString")
        for error in response.get("Errors", []):
            code = str(error.get("ErrorCode") or "Unknown")
            detail = str(error.get("Message") or "")
            failure = UpstreamError("BatchGetSecretValue", code, code in TRANSIENT_CODES, detail)
            found[error["SecretId"]] = None if code in NOT_FOUND_CODES else failure
        # AWS answers for every name it was asked; should one be missing (or set aside), ask for it alone.
        found.update(await self._get_each([name for name in batch if name not in found]))
        return found

    async def _get_each(self, names: list[str], one_at_a_time: bool = False) -> dict[str, str | UpstreamError | None]:
        step = 1 if one_at_a_time else max(len(names), 1)
        results: list[str | UpstreamError | BaseException | None] = []
        for start in range(0, len(names), step):
            chunk = names[start : start + step]
            results += await asyncio.gather(*(self.get(name) for name in chunk), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, UpstreamError):
                raise result
        return dict(zip(names, results, strict=True))  # type: ignore[arg-type]

    def _pause_batches(self, error: UpstreamError) -> None:
        if self._batch_paused_until is None:
            if error.throttled:
                log.warning(
                    "BatchGetSecretValue is throttled (%s): fetching secrets one by one with GetSecretValue "
                    "for %.0fs instead of retrying it",
                    error.code,
                    BATCH_THROTTLED_FOR,
                )
            else:
                log.warning(
                    "BatchGetSecretValue was refused (%s): fetching secrets one by one instead. Allow "
                    "secretsmanager:BatchGetSecretValue on the sidecar's role to cut AWS calls.",
                    error.code,
                )
        self._batch_paused_until = self._timer() + (BATCH_THROTTLED_FOR if error.throttled else BATCH_RETRY_AFTER)
        self._batch_throttled = error.throttled


def _current_version(entry: dict[str, Any]) -> str | None:
    """The version id AWSCURRENT is attached to, in a SecretListEntry."""
    stages = entry.get("SecretVersionsToStages") or {}
    return next((version for version, labels in stages.items() if "AWSCURRENT" in labels), None)
