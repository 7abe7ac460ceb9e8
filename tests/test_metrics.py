"""/metrics as Prometheus's own client library writes it: the daemon's exposition
(sidecar/daemon/exposition.py) against prometheus_client's, line by line, for every kind of series."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from sidecar.daemon import exposition
from sidecar.daemon.metrics import LOOKUP_RESULTS, REQUEST_BUCKETS, Metrics
from tests.support import REPO

OBSERVATIONS = [
    ("variables", 200, 0.0001),
    ("variables", 200, 0.0005),  # on a bucket's bound: counted in that bucket, as prometheus_client does
    ("variables", 404, 0.003),
    ("connections", 200, 0.7),
    ("config", 503, 9.0),  # past every bound: +Inf only
    ("variables", 200, 0.02),
]
AWKWARD = 'a "quoted" back\\slash and a\nnewline'  # every character the format escapes


def series(text: bytes, name: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(name) and "_created" not in line]


def theirs(registry: CollectorRegistry) -> str:
    """prometheus_client's text, without the `_created` series the daemon does not export."""
    return "".join(line for line in generate_latest(registry).decode().splitlines(True) if "_created" not in line)


def ours(*families: exposition.Named) -> str:
    return "".join(f"{line}\n" for family in families for line in family.lines())


def test_request_histogram_matches_prometheus_client():
    metrics = Metrics()
    registry = CollectorRegistry()
    histogram = Histogram(
        "sidecar_request_seconds", "help", ["kind", "status"], buckets=REQUEST_BUCKETS, registry=registry
    )
    for kind, status, seconds in OBSERVATIONS:
        metrics.requests.observe(seconds, kind, status)
        histogram.labels(kind, str(status)).observe(seconds)
    expected = series(generate_latest(registry), "sidecar_request_seconds_")
    assert len(expected) == 4 * (len(REQUEST_BUCKETS) + 3)  # four series: buckets, +Inf, count, sum
    assert sorted(series(metrics.render(), "sidecar_request_seconds_")) == sorted(expected)


def test_lookup_counter_matches_prometheus_client_and_shows_every_result():
    metrics = Metrics()
    registry = CollectorRegistry()
    counter = Counter("sidecar_cache_lookups", "help", ["result"], registry=registry)
    for result in LOOKUP_RESULTS:
        counter.labels(result)  # every result exported from the start, at 0
    for result in ("hit", "hit", "miss", "stale", "hit"):
        metrics.cache_lookups.counts[result] += 1
        counter.labels(result).inc()
    assert series(metrics.render(), "sidecar_cache_lookups_total") == series(
        generate_latest(registry), "sidecar_cache_lookups_total"
    )


def test_counters_and_gauges_match_prometheus_client_with_and_without_labels():
    registry = CollectorRegistry()
    help_text = f"help with {AWKWARD}"
    calls, their_calls = (
        exposition.Counter("calls", help_text, ["api", "outcome"]),
        Counter("calls", help_text, ["api", "outcome"], registry=registry),
    )
    failures, their_failures = exposition.Counter("failures", "h"), Counter("failures", "h", registry=registry)
    up, their_up = exposition.Gauge("up_now", "h"), Gauge("up_now", "h", registry=registry)
    info, their_info = exposition.Gauge("info", "h", ["version"]), Gauge("info", "h", ["version"], registry=registry)
    entries, their_entries = exposition.Gauge("entries", "h"), Gauge("entries", "h", registry=registry)
    families = (calls, failures, up, info, entries)
    assert ours(*families) == theirs(registry)  # before anything is counted

    for family in (calls, their_calls):
        family.labels("GetSecretValue", "ok").inc()
        family.labels("ListSecrets", AWKWARD).inc(3)
        family.labels("GetSecretValue", "ok").inc(0.5)
    for family in (failures, their_failures):
        family.inc()
    for gauge in (up, their_up):
        gauge.set(1765000000.125)  # a Unix time: written with an exponent
    for gauge in (info, their_info):
        gauge.labels("1.2.3").set(1)
    for gauge in (entries, their_entries):
        gauge.set_function(lambda: 12)
    assert ours(*families) == theirs(registry)


def test_a_histogram_without_labels_matches_prometheus_client_from_its_first_scrape():
    registry = CollectorRegistry()
    buckets = (0.5, 1, 2, 5, 10, 30, 60, 300)
    lag, their_lag = (
        exposition.Histogram("lag_seconds", "h", buckets),
        Histogram("lag_seconds", "h", buckets=buckets, registry=registry),
    )
    assert ours(lag) == theirs(registry)
    for seconds in (0.1, 1, 1.5, 400, 30):
        lag.observe(seconds)
        their_lag.observe(seconds)
    assert ours(lag) == theirs(registry)


def test_a_series_with_the_wrong_number_of_label_values_is_refused_when_made():
    calls = exposition.Counter("calls", "h", ["api", "outcome"])
    for wrong in (("GetSecretValue",), ("a", "b", "c")):
        try:
            calls.labels(*wrong)
        except ValueError as error:
            assert "calls" in str(error)
        else:
            raise AssertionError(f"{wrong} was taken")
    assert ours(calls).splitlines()[2:] == []  # and nothing was added


@given(st.floats() | st.integers(min_value=-(10**20), max_value=10**20))
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert exposition.number(value) == floatToGoString(value)


def test_the_process_series_are_prometheus_clients():
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    mine = {f.name: f for f in text_string_to_metric_families(ours(exposition.Process()))}
    stock = {f.name: f for f in text_string_to_metric_families(theirs(registry))}
    assert [(f.name, f.type, f.documentation) for f in mine.values()] == [
        (f.name, f.type, f.documentation) for f in stock.values()
    ]
    assert len(mine) == 6
    value = {name: (mine[name].samples[0].value, stock[name].samples[0].value) for name in mine}
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert value[name][0] == value[name][1], name
    assert abs(value["process_open_fds"][0] - value["process_open_fds"][1]) <= 1
    assert 0 < value["process_resident_memory_bytes"][0] <= value["process_virtual_memory_bytes"][0]
    assert 0 < value["process_cpu_seconds"][0] <= value["process_cpu_seconds"][1]


def test_the_daemons_exposition_parses_with_each_family_once():
    metrics = Metrics()
    metrics.upstream_calls.labels("GetSecretValue", "ok").inc()
    metrics.requests.observe(0.001, "variables", 200)
    names = [family.name for family in text_string_to_metric_families(metrics.render().decode())]
    assert len(names) == len(set(names)) and "sidecar_upstream_calls" in names and "process_open_fds" in names


def test_the_daemon_loads_no_metrics_library():
    """The exposition is the daemon's own: prometheus_client and the servers it imports (WSGI, HTTP)
    stay out of its memory (docs/benchmarks.md, S5)."""
    probe = (
        "import sys; import sidecar.daemon.lifecycle, sidecar.daemon.metrics; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'wsgiref', 'socketserver')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
