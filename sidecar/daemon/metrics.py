"""Prometheus metrics. Labels name APIs, kinds and outcomes: never a key, a name or a value.

The two series every cache hit touches, lookups and request times, are counted in plain numbers
instead of prometheus_client's locked values: the daemon counts and renders on its event loop's
one thread, and the lock and label lookups were a large share of a hit's cost (docs/benchmarks.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

from sidecar import __version__

disable_created_metrics()  # `*_created` series only double the output

LOOKUP_RESULTS = ("hit", "negative_hit", "miss", "stale")
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """One registry per daemon, so tests and embedded daemons never share counts."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_*: resident memory, open and most file descriptors, CPU seconds, start time (Linux).
        ProcessCollector(registry=self.registry)
        Gauge(
            "sidecar_build_info", "The daemon's version (the value is always 1).", ["version"], registry=self.registry
        ).labels(__version__).set(1)
        self.hardened = Gauge(
            "sidecar_hardened",
            "1 when core dumps are off and no debugger of the same user may attach (SIDECAR_HARDEN), else 0.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "sidecar_ready", "1 while /readyz answers 200 (warm, or serving lazily), else 0.", registry=self.registry
        )
        self.upstream_calls = Counter(
            "sidecar_upstream_calls",
            "AWS API calls by API and outcome (ok, not_found, throttled, error).",
            ["api", "outcome"],
            registry=self.registry,
        )
        self.paced_calls = Counter(
            "sidecar_upstream_paced_calls",
            "AWS API calls that waited for their turn within SIDECAR_AWS_QUOTA_SHARE, by API.",
            ["api"],
            registry=self.registry,
        )
        self.cache_lookups = CacheLookups(self.registry)
        self.refresh_failures = Counter(
            "sidecar_refresh_failures",
            "Background refreshes that failed.",
            registry=self.registry,
        )
        self.entries = Gauge("sidecar_cache_entries", "Entries in the cache.", registry=self.registry)
        self.requests = RequestHistogram(self.registry)
        self.last_listing = Gauge(
            "sidecar_last_listing_timestamp_seconds",
            "Unix time of the last complete listing of the prefixes (0: none yet).",
            registry=self.registry,
        )

        # Change events (SIDECAR_EVENTS): docs/events.md.
        self.events_received = Counter(
            "sidecar_events_received",
            "Event messages received, by outcome (accepted, malformed, foreign, outside_prefixes).",
            ["outcome"],
            registry=self.registry,
        )
        self.event_fetches = Counter(
            "sidecar_event_fetches",
            "Secrets fetched again because an event named them, by outcome (changed, unchanged, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.event_lag = Histogram(
            "sidecar_event_lag_seconds",
            "From an event's time to its secret's new answer in the cache.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.events_up = Gauge(
            "sidecar_events_consumer_up",
            "1 while the event queue answers (then the listing runs every SIDECAR_EVENTS_LIST_INTERVAL).",
            registry=self.registry,
        )
        self.unannounced_changes = Counter(
            "sidecar_listing_unannounced_changes",
            "Changes a listing found that no event announced (each sends the listing back to its own interval).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CacheLookups:
    """`sidecar_cache_lookups` by result: `counts[result] += 1`, on the event loop's thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counts = dict.fromkeys(LOOKUP_RESULTS, 0)
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "sidecar_cache_lookups",
            "Lookups by result: hit, negative_hit, miss, stale.",
            labels=["result"],
        )
        for result, count in self.counts.items():
            family.add_metric([result], count)
        yield family


class RequestHistogram:
    """`sidecar_request_seconds` by kind and status, observed on the event loop's thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # (kind, status) -> observations per bucket (the last past every bound), then their sum
        self._series: dict[tuple[str, int], list[float]] = {}
        registry.register(self)

    def observe(self, kind: str, status: int, seconds: float) -> None:
        series = self._series.get((kind, status))
        if series is None:
            series = self._series[kind, status] = [0] * (len(REQUEST_BUCKETS) + 2)
        series[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "sidecar_request_seconds",
            "Time to answer a /v1 request, by kind and status code.",
            labels=["kind", "status"],
        )
        edges = [*map(str, REQUEST_BUCKETS), "+Inf"]
        for (kind, status), series in sorted(self._series.items()):
            family.add_metric([kind, str(status)], list(zip(edges, accumulate(series[:-1]), strict=True)), series[-1])
        yield family
