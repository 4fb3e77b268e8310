"""Builds the backend chain the server stores blobs in, from its configuration.

Like bb-storage's new_blob_access.go: the one place that knows which backend
a setting names and which decorators wrap it. Today the chain is

    VerifyingBackend(FileSystemBackend(path))

    VerifyingBackend(ObjectStoreBackend(s3://bucket/prefix?endpoint=...))
    VerifyingBackend(ReadCache(...)) with --cache-dir (read_cache.py)

and the storage setting is a URL-ish string: `file://PATH` or a plain PATH, or
`s3://BUCKET/PREFIX?endpoint=...&region=...` (storage/objectstore/). With metrics
on (`StorageMetrics` given), each backend under VerifyingBackend is wrapped in a
MetricsBackend named for it (storage/metrics.py):

    VerifyingBackend(MetricsBackend(FileSystemBackend(path), "filesystem"))

New decorators (eviction...) plug in here, each behind a setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blobstore.storage import objectstore
from blobstore.storage.base import BlobBackend
from blobstore.storage.filesystem import JOURNAL_MAX_BLOB_BYTES, FileSystemBackend
from blobstore.storage.filesystem import metrics as filesystem_metrics
from blobstore.storage.metrics import MetricsBackend, StorageMetrics
from blobstore.storage.read_cache import ReadCache
from blobstore.storage.verifying import VerifyingBackend

FILE_SCHEME = "file://"


class UnknownStorage(ValueError):
    """The storage setting names no backend this server has."""


@dataclass(frozen=True)
class StorageSettings:
    """What the factory needs to know; the server's config fills it in."""

    url: str
    io_threads: int = 32
    journal_max_blob_bytes: int = JOURNAL_MAX_BLOB_BYTES
    cache_dir: str = ""
    cache_max_bytes: int = 1 << 30
    cache_max_blob_bytes: int = 1 << 20


@dataclass(frozen=True)
class Storage:
    """An opened backend chain: `backend` serves requests; close() releases it all."""

    backend: BlobBackend
    description: str
    close: Callable[[], None]


def local_path(url: str) -> Path | None:
    """The folder a `file://PATH` or plain-path setting names; None for other schemes."""
    if url.startswith(FILE_SCHEME):
        return Path(url[len(FILE_SCHEME) :])
    if "://" in url:
        return None
    return Path(url)


def open_storage(settings: StorageSettings, metrics: StorageMetrics | None = None) -> Storage:
    """Builds and opens the chain; raises UnknownStorage, DataFolderLocked or OSError.

    `metrics`: wrap each backend in a MetricsBackend reporting there (None: no metrics).
    """
    storage = _open_medium(settings)
    assert isinstance(storage.backend, VerifyingBackend)
    medium = storage.backend.inner
    if metrics is not None:
        if isinstance(medium, FileSystemBackend):
            filesystem_metrics.watch(medium, metrics.registry)
        name = "objectstore" if objectstore.is_object_store(settings.url) else "filesystem"
        medium = MetricsBackend(medium, name, metrics)
        storage = Storage(VerifyingBackend(medium), storage.description, storage.close)
    if not settings.cache_dir:
        return storage
    cache = ReadCache(
        medium,
        Path(settings.cache_dir).resolve(),
        max_bytes=settings.cache_max_bytes,
        max_blob_bytes=settings.cache_max_blob_bytes,
    )
    cache.open()
    cached: BlobBackend = cache if metrics is None else MetricsBackend(cache, "read_cache", metrics)
    return Storage(
        VerifyingBackend(cached),
        f"{storage.description}, read cache in {settings.cache_dir}",
        storage.close,
    )


def _open_medium(settings: StorageSettings) -> Storage:
    if objectstore.is_object_store(settings.url):
        return _open_object_store(settings.url)
    path = local_path(settings.url)
    if path is None or not str(path):
        raise UnknownStorage(
            f"storage {settings.url!r} is not supported: give file://PATH, a folder path "
            "or s3://BUCKET/PREFIX?endpoint=...&region=..."
        )
    folder = path.resolve()
    backend = FileSystemBackend(
        folder,
        io_threads=settings.io_threads,
        journal_max_blob_bytes=settings.journal_max_blob_bytes,
    )
    backend.open()
    return Storage(VerifyingBackend(backend), str(folder), backend.close)


def _open_object_store(url: str) -> Storage:
    try:
        location = objectstore.parse(url)
    except objectstore.BadStorageUrl as exc:
        raise UnknownStorage(str(exc)) from None
    backend = objectstore.ObjectStoreBackend(location)
    backend.open()
    return Storage(VerifyingBackend(backend), location.description, backend.close)
