"""The read cache's metrics: hits, misses, evictions and what it holds (storage/read_cache.py).

Registered by storage/factory.py when metrics are on and `--cache-dir` is given. Read at
scrape time from the counts the cache keeps as plain numbers, so a read pays nothing
for them. Its evictions are its own (past `--cache-max-bytes`), apart from the store's
(`blobstore_storage_removed_blobs_total`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blobstore.storage.read_cache import ReadCache


class ReadCacheCollector(Collector):
    """The cache's figures, read at each scrape."""

    def __init__(self, cache: ReadCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self._cache
        yield CounterMetricFamily(
            "blobstore_read_cache_hits",
            "Reads answered from the local read cache (hashed again, no request to the store)",
            value=cache.hits,
        )
        yield CounterMetricFamily(
            "blobstore_read_cache_misses",
            "Reads of blobs the cache did not hold (or held damaged): asked of the store",
            value=cache.misses,
        )
        yield CounterMetricFamily(
            "blobstore_read_cache_evictions",
            "Blobs the cache dropped, least recently used first, to stay under --cache-max-bytes",
            value=cache.evictions,
        )
        yield GaugeMetricFamily(
            "blobstore_read_cache_blobs", "Blobs held in the read cache", value=len(cache)
        )
        yield GaugeMetricFamily(
            "blobstore_read_cache_bytes",
            "Content bytes held in the read cache",
            value=cache.cached_bytes,
        )
        yield GaugeMetricFamily(
            "blobstore_read_cache_max_bytes",
            "The read cache's bound (--cache-max-bytes)",
            value=cache.max_bytes,
        )


def watch(cache: ReadCache, registry: CollectorRegistry) -> None:
    registry.register(ReadCacheCollector(cache))
