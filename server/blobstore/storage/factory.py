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

Over a local folder, an EvictingBackend (eviction.py) sits under VerifyingBackend
(above the metrics): it keeps the usage index that Stat's last use, `prune` and, with
--max-bytes / --max-blobs, LRU eviction work from, and coordinates deletes with puts.
Over an object store the caps bound the read cache (--cache-dir), and retention
works from the object listing (retention.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from blobstore.storage import objectstore, read_cache_metrics
from blobstore.storage.base import BlobBackend
from blobstore.storage.eviction import Caps, EvictingBackend
from blobstore.storage.filesystem import JOURNAL_MAX_BLOB_BYTES, FileSystemBackend
from blobstore.storage.filesystem import metrics as filesystem_metrics
from blobstore.storage.filesystem.backend import SMALL_BLOB_STORES
from blobstore.storage.metrics import MetricsBackend, StorageMetrics
from blobstore.storage.read_cache import ReadCache
from blobstore.storage.retention import ListingRetention, Retention
from blobstore.storage.verifying import VerifyingBackend

FILE_SCHEME = "file://"
USAGE_SNAPSHOT = "usage.snapshot"
"""In the data folder: the usage index's snapshot (usage.py)."""


class UnknownStorage(ValueError):
    """The storage setting names no backend this server has."""


@dataclass(frozen=True)
class StorageSettings:
    """What the factory needs to know; the server's config fills it in."""

    url: str
    io_threads: int = 32
    journal_max_blob_bytes: int = JOURNAL_MAX_BLOB_BYTES
    small_blob_store: str = "files"
    """'files' or 'packs' (filesystem/packs/); a `file://PATH?small=packs` URL says so too."""
    cache_dir: str = ""
    cache_max_bytes: int = 1 << 30
    cache_max_blob_bytes: int = 1 << 20
    max_bytes: int = 0
    max_blobs: int = 0
    min_age: float = 0.0


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Storage:
    """An opened backend chain: `backend` serves requests once start() has run (on the
    event loop); stop() there, then close(), release it all."""

    backend: BlobBackend
    description: str
    close: Callable[[], None]
    retention: Retention | None = None
    start: Callable[[], Awaitable[None]] = _nothing
    stop: Callable[[], Awaitable[None]] = _nothing


def local_path(url: str) -> Path | None:
    """The folder a `file://PATH` or plain-path setting names; None for other schemes."""
    if url.startswith(FILE_SCHEME):
        return Path(url[len(FILE_SCHEME) :].partition("?")[0])  # options: _small_blob_store
    if "://" in url:
        return None
    return Path(url)


def open_storage(settings: StorageSettings, metrics: StorageMetrics | None = None) -> Storage:
    """Builds and opens the chain; raises UnknownStorage, DataFolderLocked or OSError.

    `metrics`: wrap each backend in a MetricsBackend reporting there (None: no metrics).
    """
    in_object_store = objectstore.is_object_store(settings.url)
    if in_object_store and (settings.max_bytes or settings.max_blobs) and not settings.cache_dir:
        raise UnknownStorage(
            "--max-bytes and --max-blobs bound the local read cache of an object store: "
            "give --cache-dir too (the bucket itself is bounded by prune and delete)"
        )
    storage = _open_medium(settings)
    assert isinstance(storage.backend, VerifyingBackend)
    medium = storage.backend.inner
    if metrics is not None:
        if isinstance(medium, FileSystemBackend):
            filesystem_metrics.watch(medium, metrics.registry)
        name = "objectstore" if in_object_store else "filesystem"
        medium = MetricsBackend(medium, name, metrics)
        storage = Storage(VerifyingBackend(medium), storage.description, storage.close)
    if not in_object_store:
        return _with_eviction(storage, medium, settings, metrics)
    storage = Storage(storage.backend, storage.description, storage.close, ListingRetention(medium))
    if not settings.cache_dir:
        return storage
    cache_max = settings.cache_max_bytes
    if settings.max_bytes:
        cache_max = min(cache_max, settings.max_bytes)
    cache = ReadCache(
        medium,
        Path(settings.cache_dir).resolve(),
        max_bytes=cache_max,
        max_blob_bytes=settings.cache_max_blob_bytes,
    )
    cache.open()
    if metrics is not None:
        read_cache_metrics.watch(cache, metrics.registry)
    cached: BlobBackend = cache if metrics is None else MetricsBackend(cache, "read_cache", metrics)
    return Storage(
        VerifyingBackend(cached),
        f"{storage.description}, read cache in {settings.cache_dir}",
        storage.close,
        storage.retention,
    )


def _with_eviction(
    storage: Storage,
    medium: BlobBackend,
    settings: StorageSettings,
    metrics: StorageMetrics | None,
) -> Storage:
    folder = local_path(settings.url)
    assert folder is not None
    caps = Caps(settings.max_bytes, settings.max_blobs, settings.min_age)
    evicting = EvictingBackend(
        medium, caps, snapshot=folder.resolve() / USAGE_SNAPSHOT, metrics=metrics
    )
    description = storage.description
    if caps.capped:
        description += (
            f", capped at {settings.max_bytes or 'any'} bytes / {settings.max_blobs or 'any'}"
            f" blobs (LRU eviction, min age {settings.min_age:g} s)"
        )
    return Storage(
        VerifyingBackend(evicting),
        description,
        storage.close,
        evicting,
        evicting.start,
        evicting.stop,
    )


def _open_medium(settings: StorageSettings) -> Storage:
    if objectstore.is_object_store(settings.url):
        return _open_object_store(settings.url)
    path = local_path(settings.url)
    small = _small_blob_store(settings)
    if small not in SMALL_BLOB_STORES:
        raise UnknownStorage(
            f"small blob store {small!r} is not supported: give one of "
            f"{', '.join(SMALL_BLOB_STORES)}"
        )
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
        small_blob_store=small,
    )
    backend.open()
    return Storage(VerifyingBackend(backend), str(folder), backend.close)


def _small_blob_store(settings: StorageSettings) -> str:
    """--small-blob-store, or the `small=` option of a `file://PATH?small=packs` setting."""
    small = settings.small_blob_store
    if not settings.url.startswith(FILE_SCHEME) or "?" not in settings.url:
        return small
    for option in settings.url.partition("?")[2].split("&"):
        name, _, value = option.partition("=")
        if name != "small":
            raise UnknownStorage(f"file:// storage has no option {name!r} (only small=)")
        small = value
    return small


def _open_object_store(url: str) -> Storage:
    try:
        location = objectstore.parse(url)
    except objectstore.BadStorageUrl as exc:
        raise UnknownStorage(str(exc)) from None
    backend = objectstore.ObjectStoreBackend(location)
    backend.open()
    return Storage(VerifyingBackend(backend), location.description, backend.close)
