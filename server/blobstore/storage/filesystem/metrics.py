"""The file system backend's own metrics: what is stored, group commit, the journal, the disk.

Registered by storage/factory.py when metrics are on and the medium is a data
folder. Read at scrape time from figures the backend keeps anyway (usage.py,
one statvfs, one listing of journal/), so a scrape never walks the blobs; the
group-commit histograms are fed by the committer thread per batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blobstore.storage.filesystem.backend import FileSystemBackend

# Puts per group-commit batch: 1 (an idle server) to thousands (a burst of small puts).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# One journal write and fdatasync: 50 us (a fast NVMe) to 5 s (a struggling disk).
SYNC_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class FileSystemCollector(Collector):
    """Gauges read from the backend at each scrape."""

    def __init__(self, backend: FileSystemBackend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        backend = self._backend
        usage = backend.usage
        yield GaugeMetricFamily(
            "blobstore_store_blobs",
            "Blob files in the data folder (counted at start, then kept as blobs are "
            "stored and quarantined)",
            value=usage.blobs,
        )
        yield GaugeMetricFamily(
            "blobstore_store_bytes",
            "Bytes of the blob files in the data folder (header, content, metadata)",
            value=usage.bytes,
        )
        yield GaugeMetricFamily(
            "blobstore_store_counted",
            "1 once the start-up count of the data folder finished (until then the "
            "store gauges show only changes since start)",
            value=1 if usage.counted else 0,
        )
        yield CounterMetricFamily(
            "blobstore_store_quarantined_files",
            "Blob files found corrupt and moved to quarantine/ by this server (on reads "
            "and on puts of content already stored)",
            value=usage.quarantined,
        )
        yield GaugeMetricFamily(
            "blobstore_journal_segments",
            "Group-commit journal segments not yet checkpointed (the active one included): "
            "the backlog a crash would replay",
            value=backend.journal_backlog(),
        )
        if backend.packs is not None:
            segments = backend.packs.index.segments()
            yield GaugeMetricFamily(
                "blobstore_pack_segments",
                "Pack segments of small blobs (packs/), the active one included",
                value=len(segments),
            )
            yield GaugeMetricFamily(
                "blobstore_pack_bytes",
                "Bytes of the pack segments; those not live are removed records and "
                "tombstones that compaction gives back",
                value=sum(size for _, size, _ in segments),
            )
            yield GaugeMetricFamily(
                "blobstore_pack_live_bytes",
                "Bytes of the live records in the pack segments",
                value=sum(live for _, _, live in segments),
            )
        try:
            vfs = os.statvfs(backend.layout.root)
        except OSError:
            return
        yield GaugeMetricFamily(
            "blobstore_filesystem_free_bytes",
            "Bytes free for unprivileged writers on the data folder's file system",
            value=vfs.f_bavail * vfs.f_frsize,
        )
        yield GaugeMetricFamily(
            "blobstore_filesystem_size_bytes",
            "Size of the data folder's file system",
            value=vfs.f_blocks * vfs.f_frsize,
        )


def watch(backend: FileSystemBackend, registry: CollectorRegistry) -> None:
    """Registers the backend's metrics and starts the one-off count of what it holds."""
    registry.register(FileSystemCollector(backend))
    packs = backend.packs
    backend.usage.count_in_background(
        backend.layout.blobs, None if packs is None else packs.index.totals
    )
    committer = backend.committer
    if committer is None:
        return
    batch = Histogram(
        "blobstore_group_commit_batch_puts",
        "Puts made durable by one journal write and fdatasync",
        buckets=BATCH_BUCKETS,
        registry=registry,
    )
    batch_bytes = Histogram(
        "blobstore_group_commit_batch_bytes",
        "Content bytes of one group-commit batch",
        buckets=tuple(float(1 << n) for n in range(8, 24, 2)),
        registry=registry,
    )
    sync = Histogram(
        "blobstore_group_commit_sync_seconds",
        "Time of one batch's journal write and fdatasync",
        buckets=SYNC_BUCKETS,
        registry=registry,
    )

    def on_batch(puts: int, nbytes: int, seconds: float) -> None:
        batch.observe(puts)
        batch_bytes.observe(nbytes)
        sync.observe(seconds)

    committer.on_batch = on_batch
