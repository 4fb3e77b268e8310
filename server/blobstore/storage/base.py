"""The storage backend interface: bytes at rest, keyed by an id computed above it.

A backend stores and returns bytes with their type and metadata (BlobMeta: a
filename and a content type, kept from the put that stored the blob, like the
type); it does not hash, parse or validate content or metadata (the BlobStore
does), so a new medium (S3, memory) or a wrapper (verification, metrics,
caching, eviction) implements just this.
Every method is async so that network backends fit without threads.

A backend raises DataLoss when what it holds is visibly broken (a bad header,
a wrong length); checking content against its id and quarantining is the job
of VerifyingBackend, which wraps every backend the server uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Container, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from blobstore.ids import BlobId
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult


class OverLimit(Exception):
    """A read asked for a blob larger than the caller's max_size; nothing was read."""

    def __init__(self, info: BlobInfo) -> None:
        super().__init__(f"blob {info.blob_id} is {info.size} bytes")
        self.info = info


@dataclass(frozen=True, slots=True)
class ReadLimit:
    """What a whole-blob read may return: the caller's size cap and its admission step.

    A backend calls admit() once, when the blob's size is known and before it
    reads any content; that is all it has to know about limits. What admit()
    does beyond the size cap (the server's admission control reserving memory
    for the reply, which may raise Overloaded) is the caller's business.
    """

    max_size: int | None = None
    reserve: Callable[[int], object] | None = None

    def admit(self, size: int) -> bool:
        """True if a blob of `size` content bytes is to be read whole; False if it is over
        max_size (the backend then raises OverLimit). Raises what `reserve` raises."""
        if self.max_size is not None and size > self.max_size:
            return False
        if self.reserve is not None:
            self.reserve(size)
        return True


NO_LIMIT = ReadLimit()


@dataclass(frozen=True, slots=True)
class PutItem:
    """One blob of a batched put (BlobBackend.put_many): what put() takes."""

    blob_id: BlobId
    blob_type: BlobType
    data: bytes
    meta: BlobMeta = NO_META


PutOutcome = PutResult | Exception
"""What one item of a put_many ends with: its result, or the error put() would raise."""


async def put_each(backend: BlobBackend, items: Sequence[PutItem]) -> list[PutOutcome]:
    """put_many for a backend with nothing better to do: the items' puts, run together.

    Each item keeps its own result or error; all are done when this returns.
    """

    async def one(item: PutItem) -> PutOutcome:
        try:
            return await backend.put(item.blob_id, item.blob_type, item.data, item.meta)
        except Exception as exc:
            return exc

    return list(await asyncio.gather(*(one(item) for item in items)))


ChunkHook = Callable[[bytes | memoryview], object]
"""Work the caller wants done on each chunk of a streamed put (the store's hashing).

A backend calls it once per chunk before the chunk is consumed, in whatever
step suits it; the file system runs it on the I/O thread that writes the
chunk, so a chunk costs one thread hand-off, not two."""


class BlobWriter(Protocol):
    """An in-progress streamed put: chunks go to a private place until commit."""

    async def write(self, chunk: bytes | memoryview, before: ChunkHook | None = None) -> None:
        """Appends `chunk`; raises StorageFull or Unavailable on I/O failure.

        `before(chunk)`, if given, is called once before the chunk is consumed (ChunkHook).
        """
        ...

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, meta: BlobMeta = NO_META
    ) -> PutResult:
        """Publishes what was written under `blob_id` with its type and metadata, durably
        and atomically.

        If a copy that holds exactly the written bytes is already stored, they
        are dropped and the existing blob (with its first type and metadata) is
        reported with created=False; a stored copy that does not (so does not match
        its id) is quarantined and the written bytes are published in its place.
        """
        ...

    async def abort(self) -> None:
        """Drops what was written; safe to call more than once, after commit, or when cancelled."""
        ...


class BlobStream(Protocol):
    """A blob being read: its metadata, then its content as chunks.

    The reader must call aclose() (also after a failure or cancellation) to
    release what the stream holds; exhausting it is not enough.
    """

    @property
    def info(self) -> BlobInfo:
        """The blob's metadata, known before the first chunk."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None:
        """Releases the stream; safe to call more than once."""
        ...


class StoredBlob(NamedTuple):
    """One blob as a listing of the medium sees it (scan)."""

    blob_id: BlobId
    size: int
    """Content bytes; where only the stored object's size is known cheaply (a file with its
    header and metadata) an upper bound of it."""
    last_use: float
    """When the blob was last stored (seconds since the epoch), as the medium recorded it."""


@dataclass(frozen=True, slots=True)
class StreamIntent:
    """What a streamed put promised before its content: the id the client computed, the
    type, the metadata and, if declared, the size.

    The BlobStore still hashes the content and refuses a commit whose id differs; a
    backend may only use the intent to write in place (the object store uploads
    straight to the blob's key instead of to a temporary it must copy afterwards).
    """

    blob_id: BlobId
    blob_type: BlobType
    meta: BlobMeta = NO_META
    total_size: int | None = None


class BlobBackend(Protocol):
    """Durable storage of blobs by id. Reads are not verified at this level."""

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        """Stores `data` with its type and metadata under `blob_id` durably, unless a copy
        holding exactly `data` is already stored (then created=False, with the first type
        and metadata). A put is never answered from a copy that does not match: that one
        is quarantined and `data` stored."""
        ...

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        """put() of each item, one outcome per item in order (an error does not stop the
        others); returns once every stored item is durable. A backend that can make the
        batch durable at once does so (the file system: one journal commit); others
        use put_each()."""
        ...

    async def open_writer(self, intent: StreamIntent | None = None) -> BlobWriter:
        """Starts a streamed put whose id is known only at the end (or promised: `intent`;
        commit() is then called with that id or not at all)."""
        ...

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        """Returns the whole blob; raises BlobNotFound, or OverLimit if `limit` refuses it.

        `limit.admit(size)` is called once the content's size is known and
        before any content is read; what it raises ends the read there.
        """
        ...

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> BlobStream:
        """Opens the blob for reading in chunks of about `chunk_size`; raises BlobNotFound."""
        ...

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        """Returns the blob's type, size and metadata, or None if it is not stored."""
        ...

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        """Returns those of `blob_ids` that are not stored, in the given order."""
        ...

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        """Moves a stored blob found to be corrupt out of service, keeping it for analysis."""
        ...

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        """Removes the blobs durably; returns those that were stored, in the given order.

        Idempotent: an id not stored is no error. Once this returns, no crash brings a
        removed blob back (a journal that still holds it is checkpointed first). A read
        that already has the blob open may still complete with the whole content.
        """
        ...

    def scan(self, known: Container[BlobId] = ()) -> AsyncIterator[list[StoredBlob]]:
        """Every stored blob, in batches (the medium's listing; the order is the medium's).

        Blobs in `known` may come with size 0 and last_use 0.0: the caller has them
        already, and the medium need not look them up (a stat per file, at start-up).
        """
        ...


_FORWARDED = (
    "put",
    "put_many",
    "open_writer",
    "get",
    "get_stream",
    "stat",
    "find_missing",
    "quarantine",
    "delete",
    "scan",
)


class ForwardingBackend:
    """A decorator's base: every BlobBackend method goes to `inner` unless overridden.

    A method the subclass does not override is the inner backend's own bound
    method, set on the instance at construction: forwarding adds no coroutine
    layer and no call on the hot path (bb-storage's decorators embed their
    inner BlobAccess the same way). The methods below exist for type checkers
    and for code that calls them on the class.
    """

    def __init__(self, inner: BlobBackend) -> None:
        self._inner = inner
        cls = type(self)
        for name in _FORWARDED:
            if getattr(cls, name) is getattr(ForwardingBackend, name):
                setattr(self, name, getattr(inner, name))

    @property
    def inner(self) -> BlobBackend:
        """The backend this one wraps (the factory puts decorators between)."""
        return self._inner

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        return await self._inner.put(blob_id, blob_type, data, meta)

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        return await self._inner.put_many(items)

    async def open_writer(self, intent: StreamIntent | None = None) -> BlobWriter:
        return await self._inner.open_writer(intent)

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        return await self._inner.get(blob_id, limit)

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> BlobStream:
        return await self._inner.get_stream(blob_id, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        return await self._inner.stat(blob_id)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        return await self._inner.find_missing(blob_ids)

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        await self._inner.quarantine(blob_id, reason)

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        return await self._inner.delete(blob_ids)

    def scan(self, known: Container[BlobId] = ()) -> AsyncIterator[list[StoredBlob]]:
        return self._inner.scan(known)


class CountingWriter:
    """The BlobWriter of a decorator that counts what a stream writes: writes and abort go
    to the inner writer, `_written` counts the bytes; subclasses add what their commit does."""

    def __init__(self, inner: BlobWriter) -> None:
        self._inner = inner
        self._written = 0

    async def write(self, chunk: bytes | memoryview, before: ChunkHook | None = None) -> None:
        await self._inner.write(chunk, before)
        self._written += len(chunk)

    async def abort(self) -> None:
        await self._inner.abort()
