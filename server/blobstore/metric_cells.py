"""Counters and histograms for the per-call path: plain numbers, exported at scrape time.

prometheus_client's Counter.inc and Histogram.observe each check the metric, take a
lock and (a histogram) walk its buckets: with the eight a small call records (calls,
duration, bytes in and out, the storage's duration, bytes and put result) that was
about a third of what metrics cost per call. The families here record into plain
attributes instead (`cell.value += n`; a histogram finds its bucket by bisection)
and are a prometheus_client Collector: at each scrape `collect` turns them into the
same counter and histogram families (`_total`, `_bucket`/`_sum`/`_count`,
`_created`) as Counter and Histogram would.

The cost of dropping the locks: a cell must be written from ONE thread, the event
loop's (the gRPC behaviours, their (de)serializers and the storage decorators' async
methods all run there). The scrape thread only reads; a scrape may see a call
counted in one family and not yet in the next, as with prometheus_client. Label
children are made under a lock, so a scrape never walks a dict being grown.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class CountCell:
    """One counter child: `inc` from the event loop's thread only."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramCell:
    """One histogram child: `observe` from the event loop's thread only."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets are "less than or equal".
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], object] = {}
        if registry is not None:
            registry.register(self)

    def _child(self, values: tuple[str, ...]) -> object:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            with self._lock:
                child = self._children.setdefault(values, self._new())
        return child

    def _new(self) -> object:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], object]]:
        with self._lock:
            return list(self._children.items())

    def describe(self) -> list[Metric]:
        """The family without samples: its names, for the registry's duplicate check."""
        return [self._family()]

    def _family(self) -> Metric:
        raise NotImplementedError


class CellCounter(_Family):
    """A labelled counter family (`labels(...).inc(n)`), as prometheus_client's Counter."""

    def labels(self, *values: str) -> CountCell:
        child = self._child(values)
        assert isinstance(child, CountCell)
        return child

    def _new(self) -> CountCell:
        return CountCell()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, cell in self._items():
            assert isinstance(cell, CountCell)
            family.add_metric(values, cell.value, created=cell.created)
        yield family


class CellHistogram(_Family):
    """A labelled histogram family (`labels(...).observe(x)`), as prometheus_client's."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets if b != float("inf"))
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"{name}: buckets not in sorted order")
        # The `le` label as prometheus_client's Histogram writes it ("0.0001", "1.0").
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> HistogramCell:
        child = self._child(values)
        assert isinstance(child, HistogramCell)
        return child

    def _new(self) -> HistogramCell:
        return HistogramCell(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, cell in self._items():
            assert isinstance(cell, HistogramCell)
            counts, total, running = list(cell.counts), cell.sum, 0
            buckets = []
            for le, count in zip(self._les, counts, strict=True):
                running += count
                buckets.append((le, float(running)))
            family.add_metric(values, buckets, total)
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.append(Sample(f"{self.name}_created", labels, cell.created))
        yield family
