"""AWS Systems Manager Parameter Store: GetParameter, GetParametersByPath and GetParameters."""

from __future__ import annotations

from typing import Any

from aiobotocore.client import AioBaseClient

from sidecar.daemon.sources.aws import Caller
from sidecar.daemon.sources.base import Listing, UpstreamError

# The provider returns None for ParameterNotFound; a `name:version` that does not exist makes it
# raise ParameterVersionNotFound, which Airflow logs and treats as not found: here, simply a 404.
NOT_FOUND_CODES = frozenset({"ParameterNotFound", "ParameterVersionNotFound"})
BATCH_SIZE = 10  # GetParameters takes at most 10 names per call


class ParameterStoreSource:
    service = "ssm"
    list_permission = "ssm:GetParametersByPath"

    def __init__(self, client: AioBaseClient, caller: Caller) -> None:
        self._client = client
        self._call = caller

    async def get(self, name: str) -> str | None:
        response = await self._call(
            "GetParameter", lambda: self._client.get_parameter(Name=name, WithDecryption=True), NOT_FOUND_CODES
        )
        return None if response is None else response["Parameter"]["Value"]

    async def list_secrets(self, prefixes: list[str]) -> Listing:
        """Every parameter below each prefix (recursive), with its decrypted value and Version."""
        found = Listing({})
        for prefix in prefixes:  # GetParametersByPath takes one path
            request: dict[str, Any] = {"Path": prefix.rstrip("/") or "/", "Recursive": True, "WithDecryption": True}
            while True:
                page = await self._call(
                    "GetParametersByPath", lambda request=request: self._client.get_parameters_by_path(**request)
                )
                assert page is not None
                for parameter in page.get("Parameters", []):
                    if parameter["Name"].startswith(prefix):
                        found.versions[parameter["Name"]] = str(parameter.get("Version"))
                        found.values[parameter["Name"]] = parameter["Value"]
                if not page.get("NextToken"):
                    break
                request = {**request, "NextToken": page["NextToken"]}
        return found

    async def get_many(self, names: list[str], *, ahead: bool = False) -> dict[str, str | UpstreamError | None]:
        """Values of `names`, 10 per GetParameters call; a name AWS reports invalid maps to None.
        (`ahead` changes nothing: Parameter Store's reads share one quota, with nothing to fall back to.)"""
        found: dict[str, str | UpstreamError | None] = {}
        for start in range(0, len(names), BATCH_SIZE):
            batch = names[start : start + BATCH_SIZE]
            response = await self._call(
                "GetParameters", lambda batch=batch: self._client.get_parameters(Names=batch, WithDecryption=True)
            )
            assert response is not None
            found.update((p["Name"], p["Value"]) for p in response.get("Parameters", []))
            found.update((name, None) for name in response.get("InvalidParameters", []))
        return found
