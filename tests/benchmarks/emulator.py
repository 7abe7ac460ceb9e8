"""The test suite's counting AWS emulator, plus a per-request delay that models a regional round trip."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.secretsmanager.models import secretsmanager_backends

from tests.support import REGION, AwsEmulator


def client_family(user_agent: str) -> str:
    """`sidecar` for the daemon's aiobotocore client, `stock` for boto3 (the provider backend)."""
    return "sidecar" if user_agent.startswith("aiobotocore/") else "stock"


class SlowAwsEmulator(AwsEmulator):
    """`AwsEmulator` whose AWS API requests each take at least `latency` seconds more.

    The delay wraps the emulator's whole WSGI app (the counting layer included), so every
    request that reaches "AWS" pays it, as on the wire; moto's own admin routes do not.
    `latency` may be changed while the server runs.

    Besides `calls` (per API) it counts `by_client[(family, api)]`, the family told apart by
    User-Agent, so that the stock backend's and the daemon's calls stay apart even when both
    run in the same stretch of time (the daemon refreshes in the background).
    """

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__()
        self.latency = latency
        self.by_client: Counter[tuple[str, str]] = Counter()

    def start(self) -> None:
        super().start()  # returns once the server exists, before any request is served
        server = self._server
        assert server is not None
        inner = server.app

        def delayed_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if target:
                family = client_family(environ.get("HTTP_USER_AGENT", ""))
                with self._lock:
                    self.by_client[family, target.rsplit(".", 1)[-1]] += 1
            latency = self.latency
            if latency > 0 and not environ.get("PATH_INFO", "").startswith("/moto-api"):
                time.sleep(latency)
            return inner(environ, start_response)

        server.app = delayed_app  # werkzeug's request handler calls `self.server.app` per request

    def clear_counts(self) -> None:
        super().clear_counts()
        with self._lock:
            self.by_client.clear()

    def snapshot(self, family: str | None = None) -> dict[str, int]:
        """The calls counted so far, per API: all of them, or those of one client family."""
        with self._lock:
            if family is None:
                return dict(sorted(Counter(self.calls).items()))
            return dict(sorted((api, count) for (who, api), count in self.by_client.items() if who == family))

    def seed(self, secrets: dict[str, str]) -> None:
        """Create many secrets in moto's backend, which runs in this process: 10,000 take seconds
        instead of minutes over HTTP. Nothing is counted."""
        backend = secretsmanager_backends[DEFAULT_ACCOUNT_ID][REGION]
        for name, value in secrets.items():
            backend.create_secret(
                name=name,
                secret_string=value,
                secret_binary=None,
                description=None,
                tags=None,
                kms_key_id=None,
                client_request_token=None,
                replica_regions=[],
                force_overwrite=False,
            )
