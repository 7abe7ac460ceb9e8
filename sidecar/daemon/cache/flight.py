"""Single-flight: one fetch per key at a time, which every request for that key joins.

A request that has an answer to fall back on waits for the fetch at most `stale_after` from its
start, all of that fetch's requests together: a slow or black-holed AWS delays them that long,
not one after another. The fetch goes on meanwhile and its outcome is settled when it lands.
The flights under way are kept here, by key, until they land or are cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sidecar.daemon.cache.entry import Value
from sidecar.daemon.sources.base import UpstreamError

Settle = Callable[[str, int, "Value | UpstreamError"], None]


class SingleFlight:
    def __init__(self, fetch: Callable[[str], Awaitable[Value]], settle: Settle, stale_after: float) -> None:
        self._fetch = fetch
        self._settle = settle
        self._stale_after = stale_after
        self._flights: dict[str, tuple[asyncio.Future[Value], float]] = {}  # key: (fetch, its stale point)

    def under_way(self, key: str) -> asyncio.Future[Value] | None:
        flight = self._flights.get(key)
        return None if flight is None else flight[0]

    def start(self, key: str, ticket: int) -> asyncio.Future[Value]:
        """Fetch `key` (no fetch of it may be under way), as the fetch that took `ticket`."""
        fetch = asyncio.ensure_future(self._fetch_and_settle(key, ticket))
        self._flights[key] = fetch, asyncio.get_running_loop().time() + self._stale_after
        fetch.add_done_callback(lambda done: self._done(key, done))
        return fetch

    async def landed_in_time(self, key: str, fetch: asyncio.Future[Value]) -> bool:
        """Wait for `key`'s `fetch` until its stale point at most; whether it is done by then."""
        if fetch.done():
            return True
        flight = self._flights.get(key)
        wait = 0.0 if flight is None else flight[1] - asyncio.get_running_loop().time()
        return wait > 0 and bool((await asyncio.wait({fetch}, timeout=wait))[0])

    async def aclose(self) -> None:
        """Cancel the fetches under way: nothing may use the AWS client after this."""
        fetches = [fetch for fetch, _ in self._flights.values()]
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    async def _fetch_and_settle(self, key: str, ticket: int) -> Value:
        try:
            result: Value | UpstreamError = await self._fetch(key)
        except UpstreamError as error:
            result = error
        del self._flights[key]  # landed: the settled entry's expiry follows its deadlines again
        self._settle(key, ticket, result)
        if isinstance(result, UpstreamError):
            raise result
        return result

    def _done(self, key: str, fetch: asyncio.Future[Value]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight[0] is fetch:
            del self._flights[key]  # cancelled: a fetch that landed left already
        if not fetch.cancelled():
            fetch.exception()  # retrieved: a failure nobody waited for is not an "unhandled" error
