"""The Prometheus text format (version 0.0.4) for the few kinds of series the daemon exports.

Counters, gauges and histograms are plain numbers, counted and rendered on the event loop's one
thread: no locks, no collector registry. The process's own series (`process_*`) are read from
/proc at each scrape, as every Prometheus client library exports them. A number is written as
Prometheus's Go client writes it; tests/test_metrics.py compares the output with
prometheus_client's, line by line.
"""

from __future__ import annotations

import math
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def number(value: float) -> str:
    """As the Go client writes a float: `repr`, with an exponent from 1e7 on, and +Inf, -Inf, NaN."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_value(value: object) -> str:
    return _escape(str(value)).replace('"', r"\"")


def header(name: str, kind: str, help: str) -> Iterator[str]:
    """A family's two comment lines."""
    yield f"# HELP {name} {_escape(help)}"
    yield f"# TYPE {name} {kind}"


def sample(name: str, labels: Iterable[tuple[str, object]], value: float) -> str:
    """One line: the name, the labels sorted by name (their values escaped), the value."""
    pairs = ",".join(f'{key}="{_label_value(text)}"' for key, text in sorted(labels))
    return f"{name}{{{pairs}}} {number(value)}" if pairs else f"{name} {number(value)}"


class Named:
    """What every family has: a name, a help text, a type and the names of its labels."""

    kind = ""
    suffix = ""  # what the series' names add to the family's

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)

    def check(self, values: tuple[object, ...]) -> tuple[object, ...]:
        """A new series' label values: one for each of the family's labels."""
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: {len(values)} label values for the labels {self.label_names}")
        return values

    def header(self) -> Iterator[str]:
        return header(self.name + self.suffix, self.kind, self.help)


class Value:
    """One series of a counter or a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Family(Named):
    """A counter or a gauge: its series by the values of its labels (one series when it has none)."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._series: dict[tuple[str, ...], Value] = {} if labels else {(): Value()}

    def labels(self, *values: str) -> Value:
        series = self._series.get(values)
        if series is None:
            series = self._series[self.check(values)] = Value()
        return series

    def lines(self) -> Iterator[str]:
        yield from self.header()
        for values, series in self._series.items():
            yield sample(self.name + self.suffix, zip(self.label_names, values, strict=True), series.value)


class Counter(Family):
    kind, suffix = "counter", "_total"

    def inc(self, amount: float = 1.0) -> None:
        self._series[()].value += amount


class Gauge(Family):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._read: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._series[()].set(value)

    def set_function(self, read: Callable[[], float]) -> None:
        """The value is `read()` at each scrape."""
        self._read = read

    def set_to_current_time(self) -> None:
        self.set(time.time())

    def lines(self) -> Iterator[str]:
        if self._read is not None:
            self.set(self._read())
        return super().lines()


class Histogram(Named):
    """Observations by the values of its labels, counted per bucket, with their sum."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(buckets)
        self._edges = [*map(number, self.buckets), "+Inf"]
        # label values -> observations per bucket (the last past every bound), then their sum
        self._series: dict[tuple[object, ...], list[float]] = {} if labels else {(): self._empty()}

    def _empty(self) -> list[float]:
        return [0] * (len(self.buckets) + 2)

    def observe(self, value: float, *labels: object) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[self.check(labels)] = self._empty()
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def lines(self) -> Iterator[str]:
        yield from self.header()
        for values, series in sorted(self._series.items()):
            labels = list(zip(self.label_names, values, strict=True))
            for edge, count in zip(self._edges, accumulate(series[:-1]), strict=True):
                yield sample(f"{self.name}_bucket", [*labels, ("le", edge)], count)
            yield sample(f"{self.name}_count", labels, sum(series[:-1]))
            yield sample(f"{self.name}_sum", labels, series[-1])


class Process:
    """`process_*`: memory, CPU time, start time and file descriptors, read from /proc (Linux; none
    elsewhere)."""

    def __init__(self) -> None:
        self._ticks, self._page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        self._boot = self._boot_time()

    @staticmethod
    def _boot_time() -> float | None:
        try:
            with open("/proc/stat", "rb") as stat:
                return next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))
        except (OSError, StopIteration):
            return None

    def lines(self) -> Iterator[str]:
        if self._boot is None:
            return
        try:
            with open("/proc/self/stat", "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            with open("/proc/self/limits", "rb") as limits:
                max_fds = next(float(line.split()[3]) for line in limits if line.startswith(b"Max open file"))
            open_fds = len(os.listdir("/proc/self/fd"))
        except (OSError, StopIteration):
            return
        for kind, name, help, value in (
            ("gauge", "process_virtual_memory_bytes", "Virtual memory size in bytes.", float(parts[20])),
            ("gauge", "process_resident_memory_bytes", "Resident memory size in bytes.", float(parts[21]) * self._page),
            (
                "gauge",
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                float(parts[19]) / self._ticks + self._boot,
            ),
            (
                "counter",
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                float(parts[11]) / self._ticks + float(parts[12]) / self._ticks,
            ),
            ("gauge", "process_open_fds", "Number of open file descriptors.", open_fds),
            ("gauge", "process_max_fds", "Maximum number of open file descriptors.", max_fds),
        ):
            yield from header(name, kind, help)
            yield sample(name, (), value)
