"""The hand-counted series render exactly as prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar.daemon.metrics import LOOKUP_RESULTS, REQUEST_BUCKETS, Metrics

OBSERVATIONS = [
    ("variables", 200, 0.0001),
    ("variables", 200, 0.0005),  # on a bucket's bound: counted in that bucket, as prometheus_client does
    ("variables", 404, 0.003),
    ("connections", 200, 0.7),
    ("config", 503, 9.0),  # past every bound: +Inf only
    ("variables", 200, 0.02),
]


def series(text: bytes, name: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(name)]


def test_request_histogram_matches_prometheus_client():
    ours = Metrics()
    registry = CollectorRegistry()
    theirs = Histogram(
        "sidecar_request_seconds", "help", ["kind", "status"], buckets=REQUEST_BUCKETS, registry=registry
    )
    for kind, status, seconds in OBSERVATIONS:
        ours.requests.observe(kind, status, seconds)
        theirs.labels(kind, str(status)).observe(seconds)
    expected = series(generate_latest(registry), "sidecar_request_seconds_")
    assert len(expected) == 4 * (len(REQUEST_BUCKETS) + 3)  # four series: buckets, +Inf, count, sum
    assert sorted(series(ours.render(), "sidecar_request_seconds_")) == sorted(expected)


def test_lookup_counter_matches_prometheus_client_and_shows_every_result():
    ours = Metrics()
    registry = CollectorRegistry()
    theirs = Counter("sidecar_cache_lookups", "help", ["result"], registry=registry)
    for result in LOOKUP_RESULTS:
        theirs.labels(result)  # every result exported from the start, at 0
    for result in ("hit", "hit", "miss", "stale", "hit"):
        ours.cache_lookups.counts[result] += 1
        theirs.labels(result).inc()
    assert series(ours.render(), "sidecar_cache_lookups_total") == series(
        generate_latest(registry), "sidecar_cache_lookups_total"
    )
