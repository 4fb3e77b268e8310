"""metric_cells' lock-free families expose what prometheus_client's own would, sample for
sample (the parser reads both), and keep the registry's rules (names, labels, buckets)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blobstore.metric_cells import CellCounter, CellHistogram

BUCKETS = (0.0001, 0.00025, 0.001, 0.1, 1.0, 10.0)
# On a bound, just off one, under the first, above the last, zero.
OBSERVED = (0.0001, 0.00010001, 0.00005, 11.0, 0.0, 0.5, 1.0, 0.5)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # creation times differ by construction
    }


def test_the_exposition_is_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counters: list[Any] = [
        CellCounter("x_calls", "Calls", ("method", "code"), registry=ours),
        Counter("x_calls", "Calls", ("method", "code"), registry=theirs),
    ]
    histograms: list[Any] = [
        CellHistogram("x_seconds", "Time", ("method",), buckets=BUCKETS, registry=ours),
        Histogram("x_seconds", "Time", ("method",), buckets=BUCKETS, registry=theirs),
    ]
    for counter in counters:
        counter.labels("Get", "OK").inc()
        counter.labels("Get", "OK").inc(2.5)
        counter.labels("Put", "NOT_FOUND").inc()
    for histogram in histograms:
        for value in OBSERVED:
            histogram.labels("Get").observe(value)
        histogram.labels("Put").observe(0.002)
    assert _samples(ours) == _samples(theirs)
    assert (
        _samples(ours)[("x_seconds_bucket", frozenset({("method", "Get"), ("le", "0.0001")}))] == 3
    )
    created = {
        s.name for family in ours.collect() for s in family.samples if s.name.endswith("_created")
    }
    assert created == {"x_calls_created", "x_seconds_created"}


def test_registry_rules_hold() -> None:
    registry = CollectorRegistry()
    counter = CellCounter("y_calls", "Calls", ("method",), registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        CellCounter("y_calls", "Calls", ("method",), registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("Get", "extra")
    with pytest.raises(ValueError, match="sorted"):
        CellHistogram("y_seconds", "Time", (), buckets=(1.0, 0.1), registry=registry)
    assert counter.labels("Get") is counter.labels("Get")  # one child per label values
    assert registry.get_sample_value("y_calls_total", {"method": "Get"}) == 0
