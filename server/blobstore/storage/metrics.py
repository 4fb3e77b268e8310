"""A BlobBackend decorator that measures each operation of the backend it wraps.

Like bb-storage's MetricsBlobAccess: per backend (a bounded name: "filesystem",
"objectstore", "read_cache") and operation, how long it took, how it ended, and how
many content bytes went in or out; quarantines (corrupt copies taken out of service,
each also a DATA_LOSS to its caller) are counted on their own. The factory puts it
directly under VerifyingBackend when metrics are on, so what the verifier
quarantines passes here. Blob ids are never labels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from blobstore.ids import BlobId
from blobstore.metric_cells import CellCounter, CellHistogram, CountCell
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.base import (
    NO_LIMIT,
    BlobBackend,
    BlobStream,
    BlobWriter,
    CountingWriter,
    ForwardingBackend,
    PutItem,
    PutOutcome,
    ReadLimit,
    StreamIntent,
)

# 50 us (a stat from the page cache) to 10 s (a large object over the network).
STORAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_OPERATIONS = ("put", "put_many", "get", "get_stream", "stat", "find_missing", "commit")


class StorageMetrics:
    """The storage metric families, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry  # also for a backend's own families (filesystem/metrics.py)
        # The per-call families record without locks (metric_cells): MetricsBackend's
        # methods run on the event loop's thread.
        self.duration = CellHistogram(
            "blobstore_storage_operation_duration_seconds",
            "Backend operation time by backend, operation and outcome (ok or the error's name)",
            ("backend", "operation", "outcome"),
            buckets=STORAGE_BUCKETS,
            registry=registry,
        )
        self.bytes = CellCounter(
            "blobstore_storage_bytes",
            "Content bytes written (put, commit) or read (get, get_stream) by the backend",
            ("backend", "operation"),
            registry=registry,
        )
        self.created = CellCounter(
            "blobstore_storage_puts",
            "Puts and stream commits by result: created (new blob) or deduplicated",
            ("backend", "result"),
            registry=registry,
        )
        self.quarantines = Counter(
            "blobstore_storage_quarantines",
            "Stored copies found corrupt and moved out of service (each a DATA_LOSS)",
            ("backend",),
            registry=registry,
        )
        # Bounded storage (storage/eviction.py): what is stored, and what left and why.
        self.stored_bytes = Gauge(
            "blobstore_storage_stored_bytes",
            "Content bytes of the blobs stored (the usage index; --max-bytes caps it)",
            registry=registry,
        )
        self.stored_blobs = Gauge(
            "blobstore_storage_stored_blobs",
            "Blobs stored (the usage index; --max-blobs caps it)",
            registry=registry,
        )
        self.removed = Counter(
            "blobstore_storage_removed_blobs",
            "Blobs removed, by reason: evicted (LRU past the cap), pruned, deleted",
            ("reason",),
            registry=registry,
        )
        self.removed_bytes = Counter(
            "blobstore_storage_removed_bytes",
            "Content bytes of the blobs removed, by reason (as removed_blobs)",
            ("reason",),
            registry=registry,
        )


class MetricsBackend(ForwardingBackend):
    """Wraps a backend; see the module docstring."""

    def __init__(self, inner: BlobBackend, name: str, metrics: StorageMetrics) -> None:
        super().__init__(inner)
        self._ok = {op: metrics.duration.labels(name, op, "ok") for op in _OPERATIONS}
        self._failed = metrics.duration
        self._name = name
        self._bytes = {
            op: metrics.bytes.labels(name, op)
            for op in ("put", "put_many", "get", "get_stream", "commit")
        }
        self._created = metrics.created.labels(name, "created")
        self._deduplicated = metrics.created.labels(name, "deduplicated")
        self._quarantines = metrics.quarantines.labels(name)

    def _failure(self, operation: str, started: float, exc: BaseException) -> None:
        self._failed.labels(self._name, operation, type(exc).__name__).observe(
            time.perf_counter() - started
        )

    def _stored(self, result: PutResult) -> None:
        (self._created if result.created else self._deduplicated).inc()

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        started = time.perf_counter()
        try:
            result = await self._inner.put(blob_id, blob_type, data, meta)
        except BaseException as exc:
            self._failure("put", started, exc)
            raise
        self._ok["put"].observe(time.perf_counter() - started)
        self._bytes["put"].inc(len(data))
        self._stored(result)
        return result

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        started = time.perf_counter()
        try:
            outcomes = await self._inner.put_many(items)
        except BaseException as exc:
            self._failure("put_many", started, exc)
            raise
        self._ok["put_many"].observe(time.perf_counter() - started)
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, PutResult):
                self._bytes["put_many"].inc(len(item.data))
                self._stored(outcome)
        return outcomes

    async def open_writer(self, intent: StreamIntent | None = None) -> BlobWriter:
        return _MeteredWriter(self, await self._inner.open_writer(intent))

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        started = time.perf_counter()
        try:
            blob = await self._inner.get(blob_id, limit)
        except BaseException as exc:
            self._failure("get", started, exc)
            raise
        self._ok["get"].observe(time.perf_counter() - started)
        self._bytes["get"].inc(len(blob.data))
        return blob

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> BlobStream:
        started = time.perf_counter()
        try:
            stream = await self._inner.get_stream(blob_id, chunk_size)
        except BaseException as exc:
            self._failure("get_stream", started, exc)
            raise
        self._ok["get_stream"].observe(time.perf_counter() - started)
        return _MeteredStream(stream, self._bytes["get_stream"])

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        started = time.perf_counter()
        try:
            info = await self._inner.stat(blob_id)
        except BaseException as exc:
            self._failure("stat", started, exc)
            raise
        self._ok["stat"].observe(time.perf_counter() - started)
        return info

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        started = time.perf_counter()
        try:
            missing = await self._inner.find_missing(blob_ids)
        except BaseException as exc:
            self._failure("find_missing", started, exc)
            raise
        self._ok["find_missing"].observe(time.perf_counter() - started)
        return missing

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        self._quarantines.inc()  # counted even if moving it fails: the copy was bad
        await self._inner.quarantine(blob_id, reason)


class _MeteredWriter(CountingWriter):
    """A streamed put: bytes counted as written, the commit timed."""

    def __init__(self, owner: MetricsBackend, inner: BlobWriter) -> None:
        super().__init__(inner)
        self._owner = owner

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, meta: BlobMeta = NO_META
    ) -> PutResult:
        owner = self._owner
        started = time.perf_counter()
        try:
            result = await self._inner.commit(blob_id, blob_type, meta)
        except BaseException as exc:
            owner._failure("commit", started, exc)
            raise
        owner._ok["commit"].observe(time.perf_counter() - started)
        owner._bytes["commit"].inc(self._written)
        owner._stored(result)
        return result


class _MeteredStream:
    """A streamed read whose chunks are counted as they pass."""

    def __init__(self, inner: BlobStream, counter: CountCell) -> None:
        self._inner = inner
        self._count = counter.inc
        self.info = inner.info

    def __aiter__(self) -> _MeteredStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._inner)
        self._count(len(chunk))
        return chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
