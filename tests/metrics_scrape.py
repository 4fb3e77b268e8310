"""Scraping a real /metrics endpoint over HTTP and reading samples by name and labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port  # for endpoints that cannot take port 0

__all__ = ["free_port", "scrape", "value"]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample at `url`, keyed by (sample name, its labels), parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers.get_content_type() == "text/plain"
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sample's value, 0 if it is absent (a label child not made yet counts nothing)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
