from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sidecar.daemon.lifecycle import Daemon
from tests.support import FAKE_AWS_ENV, TOKEN, AwsEmulator, FakeClock, make_settings

os.environ.update(FAKE_AWS_ENV)  # before any test builds an AWS client


@pytest.fixture(autouse=True)
def no_answers_kept_from_other_tests() -> None:
    """Daemons of different tests may listen on the same port: the backend's answers kept in this
    process (`local_ttl`) are per address, and must not carry over."""
    from sidecar.backend import _forget_answers

    _forget_answers()


@pytest.fixture(scope="session")
def aws_server() -> Iterator[AwsEmulator]:
    server = AwsEmulator()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(aws_server: AwsEmulator) -> AwsEmulator:
    """The emulator, emptied, with fresh call counts."""
    aws_server.reset()
    return aws_server


@pytest.fixture
def proxy(aws: AwsEmulator) -> Iterator[Any]:
    """A fault layer in front of the emulator: give `proxy.endpoint` to the daemon."""
    from tests.faults import FaultProxy

    with FaultProxy(aws.endpoint) as layer:
        yield layer


@dataclass
class Running:
    """A daemon started in this test's event loop, on a real socket, with a fake clock."""

    daemon: Daemon
    clock: FakeClock
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.daemon.url

    async def get(
        self,
        kind: str,
        key: str,
        *,
        team: str | None = None,
        refresh: bool = False,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], str | None]:
        """GET /v1/{kind}/{key}; the key is percent-encoded as the backend does."""
        from urllib.parse import quote

        params = {}
        if team:
            params["team"] = team
        if refresh:
            params["refresh"] = "true"
        sent = dict(headers or {})
        if token is not None:
            sent["X-Sidecar-Token"] = token
        url = f"{self.url}/v1/{kind}/{quote(key, safe='')}"
        async with self.http.get(url, params=params, headers=sent) as response:
            return response.status, await response.json(), response.headers.get("X-Cache")


@pytest.fixture
async def start_sidecar(aws: AwsEmulator) -> AsyncIterator[Callable[..., Any]]:
    """`await start_sidecar(backend_kwargs=..., ttl=...)`: a Daemon opened (`Daemon.open`), its
    warm-up and refresh passes left to the test."""
    started: list[Running] = []
    session = aiohttp.ClientSession()

    async def start(*, backend_kwargs: dict[str, Any] | None = None, warm: bool = False, **env: Any) -> Running:
        env.setdefault("warmup", "true" if warm else "false")
        clock = FakeClock()
        daemon = Daemon(make_settings(aws, backend_kwargs, **env), timer=clock, jitter=lambda a, b: 0.8)
        await daemon.open()
        if warm:
            await daemon.warmup.warm_up()
        running = Running(daemon, clock, session)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.daemon.stop()
    await session.close()
