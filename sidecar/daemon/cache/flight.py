"""Single-flight: one fetch per key at a time, which every request for that key joins.

A request that has an answer to fall back on waits for the fetch at most `stale_after` from its
start, all of that fetch's requests together: a slow or black-holed AWS delays them that long,
not one after another. The fetch goes on meanwhile and its outcome is stored when it lands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sidecar.daemon.cache.entry import Answer, Entries, Entry
from sidecar.daemon.sources.base import UpstreamError

Settle = Callable[[str, int, "Answer | UpstreamError", "asyncio.Future[Answer] | None"], None]


class SingleFlight:
    def __init__(
        self,
        fetch: Callable[[str], Awaitable[Answer]],
        settle: Settle,
        ticket: Callable[[], int],
        entries: Entries,
        stale_after: float,
    ) -> None:
        self._fetch = fetch
        self._settle = settle
        self._ticket = ticket
        self._entries = entries
        self._stale_after = stale_after
        self._fetches: set[asyncio.Future[Answer]] = set()  # under way, for aclose()

    def join(self, key: str, entry: Entry | None) -> asyncio.Future[Answer]:
        """The fetch of `key` under way, or a new one."""
        if entry is not None and entry.fetch is not None:
            return entry.fetch
        if entry is None:
            entry = Entry(generation=0)
        fetch = asyncio.ensure_future(self._fetch_and_settle(key, self._ticket()))
        entry.fetch = fetch
        entry.stale_at = asyncio.get_running_loop().time() + self._stale_after
        self._fetches.add(fetch)
        fetch.add_done_callback(lambda done: self._done(entry, done))
        self._entries.keep(key, entry)  # kept while the fetch is under way
        return fetch

    async def landed_in_time(self, fetch: asyncio.Future[Answer], entry: Entry) -> bool:
        """Wait for `fetch` until the entry's stale point; whether it is done by then."""
        wait = entry.stale_at - asyncio.get_running_loop().time()
        return fetch.done() or (wait > 0 and bool((await asyncio.wait({fetch}, timeout=wait))[0]))

    async def aclose(self) -> None:
        """Cancel the fetches under way: nothing may use the AWS client after this."""
        fetches = list(self._fetches)
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    async def _fetch_and_settle(self, key: str, ticket: int) -> Answer:
        try:
            result: Answer | UpstreamError = await self._fetch(key)
        except UpstreamError as error:
            result = error
        self._settle(key, ticket, result, asyncio.current_task())
        if isinstance(result, UpstreamError):
            raise result
        return result

    def _done(self, entry: Entry, fetch: asyncio.Future[Answer]) -> None:
        self._fetches.discard(fetch)
        if entry.fetch is fetch:
            entry.fetch = None  # cancelled: settled fetches cleared it already
        if not fetch.cancelled():
            fetch.exception()  # retrieved: a failure nobody waited for is not an "unhandled" error
