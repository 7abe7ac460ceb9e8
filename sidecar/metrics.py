"""Prometheus metrics. Labels name APIs, kinds and outcomes: never a key, a name or a value."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # `*_created` series only double the output


class Metrics:
    """One registry per daemon, so tests and embedded daemons never share counts."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.upstream_calls = Counter(
            "sidecar_upstream_calls",
            "AWS API calls by API and outcome (ok, not_found, error).",
            ["api", "outcome"],
            registry=self.registry,
        )
        self.lookups = Counter(
            "sidecar_cache_lookups",
            "Lookups by result: hit, negative_hit, listed_absent (no such name in the listing), miss, stale.",
            ["result"],
            registry=self.registry,
        )
        self.refresh_failures = Counter(
            "sidecar_refresh_failures",
            "Background refreshes that failed.",
            registry=self.registry,
        )
        self.entries = Gauge("sidecar_cache_entries", "Entries in the cache.", registry=self.registry)
        self.requests = Histogram(
            "sidecar_request_seconds",
            "Time to answer a /v1 request, by kind and status code.",
            ["kind", "status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.last_listing = Gauge(
            "sidecar_last_listing_timestamp_seconds",
            "Unix time of the last complete listing of the prefixes (0: none yet).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
