"""The blob store: turns content into ids and enforces the rules, over any BlobBackend.

It owns everything that is the same whatever the medium: JSON
canonicalisation (of Json and Flow blobs alike), hashing, size limits, the
rules of metadata (metadata.py), streamed-put bookkeeping. Backends only keep
bytes; transports (gRPC, the bridge) only translate.

Why ~470 lines: unary, batched and streamed puts share one preparation (_prepare:
limits, canonical JSON, the remembered texts, hashing, expected ids); split across
modules, the rules of a put would be read in three places.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass

from blobstore import json_values
from blobstore.canonical_json import canonicalize_text, canonicalize_value
from blobstore.errors import (
    BlobNotFound,
    BlobStoreError,
    BlobTooLarge,
    DataLoss,
    DigestMismatch,
    InvalidArgument,
    UseStreaming,
)
from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.metadata import check_meta
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.offload import offload, offload_to_process, sha256_hex
from blobstore.storage.base import (
    BlobBackend,
    BlobStream,
    OverLimit,
    PutItem,
    ReadLimit,
    StreamIntent,
)
from blobstore.storage.retention import PruneReport, Retention

MiB = 1024 * 1024
TEXT_CACHE_ENTRIES = 4096
"""JSON texts whose id put_dedup remembers (about 200 bytes each)."""
CHECK_CHUNK = 256 * 1024
"""A stored copy read to answer a put without its content is read in chunks of this size."""
TEXT_CACHE_MAX_TEXT = 256 * 1024
"""Longer texts are not remembered: their canonicalisation runs in a thread anyway."""
PROCESS_MIN_VALUES = 200_000
"""JSON texts with more values than this are canonicalised in the worker process: parsing
them holds the GIL for tens of milliseconds or more."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes the store refuses to go past."""

    max_blob_bytes: int = 64 * 1024 * MiB
    """Largest blob of any type, streamed or not."""
    max_json_bytes: int = 64 * MiB
    """Largest Json blob: JSON is parsed whole to canonicalise it."""
    max_unary_bytes: int = 32 * MiB
    """Largest blob returned by unary Get; larger ones must be streamed."""
    max_find_missing: int = 10_000
    """Most ids in one FindMissing call."""
    max_json_values: int = json_values.DEFAULT_MAX_VALUES
    """Most values in one Json blob's text (json_values.py says how they are counted)."""
    max_batch_items: int = 1000
    """Most items in one batched put or get (BatchPut, BatchGet)."""


@dataclass(frozen=True, slots=True)
class PutSpec:
    """One item of a batched put, as put() or put_canonical_json() would take it."""

    blob_type: BlobType
    data: bytes
    """Raw bytes, or JSON text (Json, Flow) to canonicalise unless `canonical`."""
    expected_id: BlobId | None = None
    meta: BlobMeta = NO_META
    canonical: bool = False
    """`data` is already canonical JSON (made by canonicalize_value)."""


BatchOutcome = PutResult | BlobStoreError
"""One item of put_many: its result, or the store error put() would raise."""


class BlobStore:
    """Content-addressed puts and verified gets over a backend."""

    def __init__(
        self,
        backend: BlobBackend,
        limits: Limits | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits or Limits()
        self.retention = retention
        self._text_ids: OrderedDict[bytes, BlobId] = OrderedDict()

    async def put(
        self,
        blob_type: BlobType,
        data: bytes,
        expected_id: BlobId | None = None,
        meta: BlobMeta = NO_META,
    ) -> PutResult:
        """Stores `data` (raw bytes, or JSON text for Json and Flow) and returns its id.

        `meta` is kept if this put stores the blob (first writer wins, like the type).
        """
        prepared = await self._prepare(PutSpec(blob_type, data, expected_id, meta))
        if isinstance(prepared, PutResult):
            return prepared
        item, key = prepared
        result = await self.backend.put(item.blob_id, item.blob_type, item.data, item.meta)
        self._remember(key, result)
        return result

    async def put_many(self, specs: Sequence[PutSpec]) -> list[BatchOutcome]:
        """Stores each item by the rules of put(); one outcome per item, in order.

        An item that breaks a rule gets its error and the others go on; those that
        pass are stored by one backend.put_many (the file system makes them durable
        with one commit). Returns once every stored item is durable.
        """
        self.check_batch(len(specs))
        outcomes: list[BatchOutcome | None] = [None] * len(specs)
        pending: list[tuple[int, PutItem, bytes | None]] = []
        # One after the other, not gathered: small items never wait (their work runs
        # inline), and a task per item cost more than it overlapped (docs/performance.md).
        for index, spec in enumerate(specs):
            try:
                one = await self._prepare(spec)
            except BlobStoreError as exc:
                outcomes[index] = exc
                continue
            if isinstance(one, PutResult):
                outcomes[index] = one
            else:
                pending.append((index, *one))
        stored = await self.backend.put_many([item for _, item, _ in pending])
        for (index, _, key), outcome in zip(pending, stored, strict=True):
            if isinstance(outcome, PutResult):
                self._remember(key, outcome)
            elif not isinstance(outcome, BlobStoreError):
                raise outcome
            outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def check_batch(self, items: int) -> None:
        """Refuses a batch of more items than max_batch_items."""
        if items > self.limits.max_batch_items:
            raise InvalidArgument(
                f"a batch takes at most {self.limits.max_batch_items} items, got {items} "
                "(--max-batch-items); split it"
            )

    async def _prepare(self, spec: PutSpec) -> tuple[PutItem, bytes | None] | PutResult:
        """What to hand the backend for `spec` (and the key its JSON text is remembered
        under), or its result at once if it is JSON text already stored."""
        blob_type, data, expected_id = spec.blob_type, spec.data, spec.expected_id
        meta = check_meta(spec.meta)
        if spec.canonical:
            _check_json_type(blob_type)
        self._check_size(blob_type, len(data))
        if not blob_type.is_json or spec.canonical:
            item = await self._item(blob_type, data, expected_id, meta)
            return item, None
        key = None
        if len(data) <= TEXT_CACHE_MAX_TEXT:
            key = hashlib.sha256(data).digest()
            known = await self._known_text(key, expected_id)
            if known is not None:
                return known
        content = await self._canonical_text(data)
        self._check_size(blob_type, len(content))
        return await self._item(blob_type, content, expected_id, meta), key

    def _remember(self, key: bytes | None, result: PutResult) -> None:
        """Remembers the id of JSON text just stored (put_dedup; see _known_text)."""
        if key is not None:
            self._text_ids[key] = result.info.blob_id
            if len(self._text_ids) > TEXT_CACHE_ENTRIES:
                self._text_ids.popitem(last=False)

    async def _canonical_text(self, data: bytes) -> bytes:
        """canonicalize_text(data), refused early if it has too many values.

        A text of many values is canonicalised in the worker process: parsing it
        would hold the GIL, and so stall every other call, for as long as it takes.
        """
        limit = self.limits.max_json_values
        values = await offload(len(data), json_values.estimate_values, data)
        if limit and values > limit:  # perhaps commas in strings: count again without them
            values = await offload_to_process(json_values.count_values, data)
        if limit and values > limit:
            raise BlobTooLarge(
                f"the JSON text has about {values} values, over the limit of {limit} "
                "(--max-json-values): each costs memory when parsed"
            )
        if values > PROCESS_MIN_VALUES:
            return await offload_to_process(canonicalize_text, data)
        return await offload(len(data), canonicalize_text, data)

    async def _known_text(self, key: bytes, expected_id: BlobId | None) -> PutResult | None:
        """The result of re-putting JSON text put before, if its blob is still stored and sound.

        Canonicalising is a pure function of the text, so the id remembered for
        the text's SHA-256 is the id canonicalising would give again; only the
        blob's presence can have changed, and that is checked on disk (a
        quarantined or missing blob makes this None and the put stores it again).
        """
        blob_id = self._text_ids.get(key)
        if blob_id is None:
            return None
        _check_expected(blob_id, expected_id)
        info = await self._sound_copy(blob_id)
        if info is None:
            return None
        self._text_ids.move_to_end(key)
        return PutResult(info, created=False)

    async def _sound_copy(self, blob_id: BlobId) -> BlobInfo | None:
        """The stored blob's metadata once its whole copy has been read and found to match
        its id; None if it is not stored, or its copy does not match.

        What a put answers from when it has not got the content in hand (JSON text
        it remembers, a stream that names its expected_id): never from a copy that
        does not match. The backend's reads are verified (VerifyingBackend), so a bad
        copy is quarantined by the read, and the put then stores a sound one. Small
        blobs are read whole (on the event loop when cached), larger ones streamed.
        """
        try:
            return (await self.backend.get(blob_id, ReadLimit(max_size=CHECK_CHUNK))).info
        except (BlobNotFound, DataLoss):
            return None
        except OverLimit:
            pass
        try:
            stream = await self.backend.get_stream(blob_id, CHECK_CHUNK)
        except (BlobNotFound, DataLoss):
            return None
        try:
            async for _ in stream:
                pass
        except DataLoss:
            return None
        finally:
            await stream.aclose()
        return stream.info

    async def put_json_value(
        self,
        value: object,
        expected_id: BlobId | None = None,
        *,
        size_hint: int = 0,
        blob_type: BlobType = BlobType.JSON,
        meta: BlobMeta = NO_META,
    ) -> PutResult:
        """Stores a JSON value given as Python objects (dict, list, str, float...) as a
        Json or Flow blob.

        `size_hint`, roughly the size of the value's encoding, decides whether
        canonicalising it is worth a thread.
        """
        _check_json_type(blob_type)
        content = await offload(size_hint, canonicalize_value, value)
        return await self.put_canonical_json(content, expected_id, blob_type=blob_type, meta=meta)

    async def put_canonical_json(
        self,
        content: bytes,
        expected_id: BlobId | None = None,
        *,
        blob_type: BlobType = BlobType.JSON,
        meta: BlobMeta = NO_META,
    ) -> PutResult:
        """Stores JSON text that is already canonical (made by canonicalize_value) as a
        Json or Flow blob."""
        spec = PutSpec(blob_type, content, expected_id, meta, canonical=True)
        prepared = await self._prepare(spec)
        assert not isinstance(prepared, PutResult), "canonical JSON is never looked up"
        item = prepared[0]
        return await self.backend.put(item.blob_id, item.blob_type, item.data, item.meta)

    async def _item(
        self, blob_type: BlobType, content: bytes, expected_id: BlobId | None, meta: BlobMeta
    ) -> PutItem:
        digest = await offload(len(content), sha256_hex, content)
        blob_id = blob_id_from_digest(digest)
        _check_expected(blob_id, expected_id)
        return PutItem(blob_id, blob_type, content, meta)

    async def put_stream(
        self,
        blob_type: BlobType,
        chunks: AsyncIterable[bytes | memoryview],
        *,
        total_size: int | None = None,
        expected_id: BlobId | None = None,
        meta: BlobMeta = NO_META,
    ) -> PutResult:
        """Stores a blob given as chunks, in bounded memory for Binary blobs.

        Json and Flow blobs are gathered (up to max_json_bytes) and canonicalised whole.
        """
        meta = check_meta(meta)
        if total_size is not None:
            self._check_size(blob_type, total_size)
        if expected_id is not None:
            # Answered before the data is sent, but only from a copy read and found sound.
            existing = await self._sound_copy(expected_id)
            if existing is not None:
                return PutResult(existing, created=False)
        if blob_type.is_json:
            return await self._put_json_stream(blob_type, chunks, total_size, expected_id, meta)
        return await self._put_binary_stream(chunks, total_size, expected_id, meta)

    async def _put_json_stream(
        self,
        blob_type: BlobType,
        chunks: AsyncIterable[bytes | memoryview],
        total_size: int | None,
        expected_id: BlobId | None,
        meta: BlobMeta,
    ) -> PutResult:
        parts: list[bytes | memoryview] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            self._check_size(blob_type, size)
            _check_total(size, total_size, final=False)
            parts.append(chunk)
        _check_total(size, total_size, final=True)
        data = b"".join(parts)
        parts.clear()
        content = await self._canonical_text(data)
        self._check_size(blob_type, len(content))
        blob_id = blob_id_from_digest(await offload(len(content), sha256_hex, content))
        _check_expected(blob_id, expected_id)
        # Through a writer, as Binary streams, so that a cancelled call stores nothing.
        intent = StreamIntent(blob_id, blob_type, meta, len(content))
        writer = await self.backend.open_writer(intent)
        try:
            await writer.write(content)
            return await writer.commit(blob_id, blob_type, meta)
        finally:
            await writer.abort()

    async def _put_binary_stream(
        self,
        chunks: AsyncIterable[bytes | memoryview],
        total_size: int | None,
        expected_id: BlobId | None,
        meta: BlobMeta,
    ) -> PutResult:
        hasher = hashlib.sha256()
        intent = None
        if expected_id is not None:
            intent = StreamIntent(expected_id, BlobType.BINARY, meta, total_size)
        writer = await self.backend.open_writer(intent)
        # One chunk is hashed and written (in a thread) while the next is received:
        # at most two chunks in memory, and gRPC flow control holds the sender back.
        pending: asyncio.Task[None] | None = None
        try:
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                self._check_size(BlobType.BINARY, size)
                _check_total(size, total_size, final=False)
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(writer.write(chunk, hasher.update))
            if pending is not None:
                await pending
            _check_total(size, total_size, final=True)
            blob_id = blob_id_from_digest(hasher.hexdigest())
            _check_expected(blob_id, expected_id)
            return await writer.commit(blob_id, BlobType.BINARY, meta)
        finally:
            if pending is not None:
                if not pending.done():
                    pending.cancel()  # the writer closes its file once the thread is done
                elif not pending.cancelled():
                    pending.exception()  # seen: this put already fails for another reason
            await writer.abort()

    async def get(self, blob_id: BlobId, reserve: Callable[[int], object] | None = None) -> Blob:
        """Returns a whole blob, verified; UseStreaming if it is over the unary limit.

        `reserve(size)` is called before the content is read (see BlobBackend.get).
        """
        try:
            return await self.backend.get(blob_id, ReadLimit(self.limits.max_unary_bytes, reserve))
        except OverLimit as exc:
            raise UseStreaming(
                f"blob {blob_id} is {exc.info.size} bytes, over the unary limit of "
                f"{self.limits.max_unary_bytes} bytes; read it with GetStream"
            ) from None

    async def get_many(
        self, blob_ids: Sequence[BlobId], reserve: Callable[[int], object] | None = None
    ) -> list[Blob | BlobStoreError]:
        """Returns each blob, verified, or its own error, in order.

        The blobs' content together stays under the unary limit: a blob that would
        take the reply past it is not read and gets UseStreaming (later ones that
        still fit are read). `reserve(size)` is called before each blob is read.
        """
        self.check_batch(len(blob_ids))
        room = self.limits.max_unary_bytes
        outcomes: list[Blob | BlobStoreError] = []
        for blob_id in blob_ids:
            try:
                blob = await self.backend.get(blob_id, ReadLimit(room, reserve))
            except OverLimit as exc:
                outcomes.append(
                    UseStreaming(
                        f"blob {blob_id} is {exc.info.size} bytes: with it the batch reply "
                        f"would pass the unary limit of {self.limits.max_unary_bytes} bytes; "
                        "read it with Get, GetStream or in another batch"
                    )
                )
                continue
            except BlobStoreError as exc:
                outcomes.append(exc)
                continue
            room -= blob.info.size
            outcomes.append(blob)
        return outcomes

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> BlobStream:
        """Opens a blob for reading in chunks; the caller must aclose() the stream."""
        return await self.backend.get_stream(blob_id, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        return await self.backend.stat(blob_id)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        if len(blob_ids) > self.limits.max_find_missing:
            raise InvalidArgument(
                f"FindMissing takes at most {self.limits.max_find_missing} ids, got {len(blob_ids)}"
            )
        unique = list(dict.fromkeys(blob_ids))
        return await self.backend.find_missing(unique)

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        """Removes the blobs; returns those that were stored. Idempotent."""
        if len(blob_ids) > self.limits.max_find_missing:
            raise InvalidArgument(
                f"Delete takes at most {self.limits.max_find_missing} ids, got {len(blob_ids)}"
            )
        return await self.backend.delete(list(dict.fromkeys(blob_ids)))

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        """Removes the blobs not used for `older_than` seconds (lists them if dry_run)."""
        if self.retention is None:
            raise InvalidArgument("this store keeps no last uses: prune is not available")
        if not older_than > 0:  # NaN too: every comparison with it is false, and so
            # "not used since now - NaN" would have taken every blob
            raise InvalidArgument(f"older_than must be more than 0 seconds, not {older_than}")
        return await self.retention.prune(older_than, dry_run=dry_run)

    def last_use(self, blob_id: BlobId) -> float | None:
        """When the blob was last put or read, if the store keeps that."""
        return self.retention.last_use(blob_id) if self.retention is not None else None

    def _check_size(self, blob_type: BlobType, size: int) -> None:
        limit = self.limits.max_blob_bytes
        if blob_type.is_json:
            limit = min(limit, self.limits.max_json_bytes)
        if size > limit:
            raise BlobTooLarge(
                f"{blob_type.value} blob of {size} bytes or more is over the limit of {limit} bytes"
            )


def _check_expected(blob_id: BlobId, expected_id: BlobId | None) -> None:
    if expected_id is not None and blob_id != expected_id:
        raise DigestMismatch(f"digest mismatch: content hashes to {blob_id}, not {expected_id}")


def _check_total(size: int, total_size: int | None, *, final: bool) -> None:
    if total_size is None:
        return
    if size > total_size or (final and size != total_size):
        raise InvalidArgument(
            f"stream carried {size} bytes{'' if final else ' so far'}, "
            f"but its first message declared total_size={total_size}"
        )


def _check_json_type(blob_type: BlobType) -> None:
    if not blob_type.is_json:
        raise InvalidArgument(f"a JSON value cannot be stored as a {blob_type.value} blob")
