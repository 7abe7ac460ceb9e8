"""What every source gives: a value per name, a listing of names with their versions, batches;
and what it raises when AWS fails, `UpstreamError`, with the AWS error codes that decide its kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Codes that may pass: AWS throttles or fails inside, or the sidecar's own credentials are not
# usable right now (being renewed, clock skew, keys replaced). These serve stale answers; only a
# refusal (AccessDenied), a deletion or a decryption failure takes a cached answer away.
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
    }
)
TRANSIENT_CODES = THROTTLING_CODES | frozenset(
    {
        "InternalServiceError",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredTokenException",
        "ExpiredToken",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
    }
)


CREDENTIAL_CODES = frozenset(
    {
        "NoCredentials",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
    }
)


class UpstreamError(Exception):
    """An AWS call failed. `transient` failures may serve stale answers; others never do."""

    def __init__(self, api: str, code: str, transient: bool, detail: str = "") -> None:
        self.api = api
        self.code = code
        self.transient = transient
        # `detail` is AWS's own message (ARNs, actions): logged, never sent to clients.
        self.detail = detail
        super().__init__(f"AWS {api} failed: {code}")

    @property
    def throttled(self) -> bool:
        """AWS refused the call for its rate: ask another API, or later, not this one again now."""
        return self.code in THROTTLING_CODES

    @property
    def hint(self) -> str:
        if self.code in ("AccessDeniedException", "AccessDenied"):
            return "the sidecar's IAM role lacks a permission; see the IAM policy in docs/security.md"
        if self.code in CREDENTIAL_CODES:
            return (
                "the sidecar has no valid AWS credentials (or its clock is off); check its role, profile or environment"
            )
        if self.transient:
            return "AWS is throttling or unreachable; the sidecar retries with back-off"
        return "see the sidecar's log"


@dataclass(frozen=True, slots=True)
class Listing:
    """The names under some prefixes: each name's version, which changes whenever its value does
    (AWSCURRENT's version id, a parameter's Version), and the values where the listing carries
    them (Parameter Store's)."""

    versions: dict[str, str | None]
    values: dict[str, str] = field(default_factory=dict)


class Source(Protocol):
    service: str  # the AWS service name of its client
    list_permission: str  # the IAM action that listing needs, for the log line when it is denied

    async def get(self, name: str) -> str | None: ...

    async def list_secrets(self, prefixes: list[str]) -> Listing:
        """Every name under any of `prefixes` (each ends with the separator)."""
        ...

    async def get_many(self, names: list[str], *, ahead: bool = False) -> dict[str, str | UpstreamError | None]:
        """The outcome for each name: its value, None (no such secret), or its own failure.

        Raises UpstreamError when the whole call fails. `ahead`: the names are only wanted ahead
        of use (warm-up), so a throttled batch API is not worked around with one call per name.
        """
        ...
