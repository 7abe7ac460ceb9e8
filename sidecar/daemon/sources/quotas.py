"""AWS's request quotas, and the share of them one daemon may use.

Every daemon of a fleet draws on the same quotas, per account and region, and the listing and
batch APIs have small ones (100 requests/s). One daemon paces its own calls to `share` of each
quota with a token bucket, waiting for its turn rather than being refused, so that it alone never
crowds out the account's other clients; a fleet also spreads its warm-ups (SIDECAR_WARMUP_JITTER,
sized in docs/deployment.md, "Fleet sizing", from `make fleet`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# AWS API -> (the quota it draws on, its default requests/s per account and region). From AWS's
# documentation: Secrets Manager quotas; Parameter Store's standard throughput, shared by the reads.
QUOTAS: dict[str, tuple[str, float]] = {
    "GetSecretValue": ("GetSecretValue", 10_000.0),
    "BatchGetSecretValue": ("BatchGetSecretValue", 100.0),
    "ListSecrets": ("ListSecrets", 100.0),
    "GetParameter": ("Parameter Store reads", 40.0),
    "GetParameters": ("Parameter Store reads", 40.0),
    "GetParametersByPath": ("Parameter Store reads", 40.0),
}


class TokenBucket:
    """`rate` calls a second, up to a second's worth at once. `reserve` queues a caller behind
    the ones before it: a burst is spread out, never refused."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._at = now

    def reserve(self, now: float) -> float:
        """Take a call's token; return the seconds to wait before making it (0: at once)."""
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate) - 1
        self._at = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimits:
    """One bucket per quota, at `share` of its default rate."""

    def __init__(self, share: float, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        now = timer()
        buckets = {quota: TokenBucket(share * rate, now) for quota, rate in QUOTAS.values()}
        self._buckets = {api: buckets[quota] for api, (quota, _) in QUOTAS.items()}

    def delay(self, api: str) -> float:
        """Seconds the next `api` call must wait to stay within its share (0 for other APIs)."""
        bucket = self._buckets.get(api)
        return 0.0 if bucket is None else bucket.reserve(self._timer())
