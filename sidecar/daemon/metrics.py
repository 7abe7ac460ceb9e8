"""Prometheus metrics. Labels name APIs, kinds and outcomes: never a key, a name or a value.

Every series is a plain number on the event loop's one thread, rendered by exposition.py. The
two every cache hit touches, lookups and request times, are the cheapest of all: a dict's count
and a histogram's bucket (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from sidecar import __version__
from sidecar.daemon.exposition import CONTENT_TYPE, Counter, Gauge, Histogram, Named, Process, sample

LOOKUP_RESULTS = ("hit", "negative_hit", "miss", "stale")
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

F = TypeVar("F", bound="Named | Process")


class Metrics:
    """The series of one daemon, so tests and embedded daemons never share counts; `render()` is
    what /metrics answers."""

    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self._families: list[Named | Process] = []
        # process_*: resident memory, open and most file descriptors, CPU seconds, start time (Linux).
        self._add(Process())
        self._add(Gauge("sidecar_build_info", "The daemon's version (the value is always 1).", ["version"])).labels(
            __version__
        ).set(1)
        self.hardened = self._add(
            Gauge(
                "sidecar_hardened",
                "1 when core dumps are off and no debugger of the same user may attach (SIDECAR_HARDEN), else 0.",
            )
        )
        self.ready = self._add(Gauge("sidecar_ready", "1 while /readyz answers 200 (warm, or serving lazily), else 0."))
        self.upstream_calls = self._add(
            Counter(
                "sidecar_upstream_calls",
                "AWS API calls by API and outcome (ok, not_found, throttled, error).",
                ["api", "outcome"],
            )
        )
        self.paced_calls = self._add(
            Counter(
                "sidecar_upstream_paced_calls",
                "AWS API calls that waited for their turn within SIDECAR_AWS_QUOTA_SHARE, by API.",
                ["api"],
            )
        )
        self.cache_lookups = self._add(CacheLookups())
        self.refresh_failures = self._add(Counter("sidecar_refresh_failures", "Background refreshes that failed."))
        self.entries = self._add(Gauge("sidecar_cache_entries", "Entries in the cache."))
        self.requests = self._add(
            Histogram(
                "sidecar_request_seconds",
                "Time to answer a /v1 request, by kind and status code.",
                REQUEST_BUCKETS,
                ["kind", "status"],
            )
        )
        self.last_listing = self._add(
            Gauge(
                "sidecar_last_listing_timestamp_seconds",
                "Unix time of the last complete listing of the prefixes (0: none yet).",
            )
        )

        # Change events (SIDECAR_EVENTS): docs/events.md.
        self.events_received = self._add(
            Counter(
                "sidecar_events_received",
                "Event messages received, by outcome (accepted, malformed, foreign, outside_prefixes).",
                ["outcome"],
            )
        )
        self.event_fetches = self._add(
            Counter(
                "sidecar_event_fetches",
                "Secrets fetched again because an event named them, by outcome (changed, unchanged, failed).",
                ["outcome"],
            )
        )
        self.event_lag = self._add(
            Histogram(
                "sidecar_event_lag_seconds",
                "From an event's time to its secret's new answer in the cache.",
                (0.5, 1, 2, 5, 10, 30, 60, 300),
            )
        )
        self.events_up = self._add(
            Gauge(
                "sidecar_events_consumer_up",
                "1 while the event queue answers (then the listing runs every SIDECAR_EVENTS_LIST_INTERVAL).",
            )
        )
        self.unannounced_changes = self._add(
            Counter(
                "sidecar_listing_unannounced_changes",
                "Changes a listing found that no event announced (each sends the listing back to its own interval).",
            )
        )

    def _add(self, family: F) -> F:
        self._families.append(family)
        return family

    def render(self) -> bytes:
        lines = [line for family in self._families for line in family.lines()]
        return ("\n".join(lines) + "\n").encode()


class CacheLookups(Named):
    """`sidecar_cache_lookups` by result: `counts[result] += 1`, on the event loop's thread."""

    kind, suffix = "counter", "_total"

    def __init__(self) -> None:
        super().__init__("sidecar_cache_lookups", "Lookups by result: hit, negative_hit, miss, stale.", ["result"])
        self.counts = dict.fromkeys(LOOKUP_RESULTS, 0)

    def lines(self) -> Iterator[str]:
        yield from self.header()
        for result, count in self.counts.items():
            yield sample(self.name + self.suffix, [("result", result)], count)
