"""The blob store: turns content into ids and enforces the rules, over any BlobBackend.

It owns everything that is the same whatever the medium: JSON
canonicalisation (of Json and Flow blobs alike), hashing, size limits, the
rules of metadata (metadata.py), streamed-put bookkeeping. Backends only keep
bytes; transports (gRPC, the bridge) only translate.
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
from blobstore.storage.base import BlobBackend, BlobStream, OverLimit, ReadLimit, StreamIntent

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


class BlobStore:
    """Content-addressed puts and verified gets over a backend."""

    def __init__(self, backend: BlobBackend, limits: Limits | None = None) -> None:
        self.backend = backend
        self.limits = limits or Limits()
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
        meta = check_meta(meta)
        self._check_size(blob_type, len(data))
        if not blob_type.is_json:
            return await self._put_content(blob_type, data, expected_id, meta)
        key = None
        if len(data) <= TEXT_CACHE_MAX_TEXT:
            key = hashlib.sha256(data).digest()
            known = await self._known_text(key, expected_id)
            if known is not None:
                return known
        content = await self._canonical_text(data)
        self._check_size(blob_type, len(content))
        result = await self._put_content(blob_type, content, expected_id, meta)
        if key is not None:
            self._text_ids[key] = result.info.blob_id
            if len(self._text_ids) > TEXT_CACHE_ENTRIES:
                self._text_ids.popitem(last=False)
        return result

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
        _check_json_type(blob_type)
        meta = check_meta(meta)
        self._check_size(blob_type, len(content))
        return await self._put_content(blob_type, content, expected_id, meta)

    async def _put_content(
        self, blob_type: BlobType, content: bytes, expected_id: BlobId | None, meta: BlobMeta
    ) -> PutResult:
        digest = await offload(len(content), sha256_hex, content)
        blob_id = blob_id_from_digest(digest)
        _check_expected(blob_id, expected_id)
        return await self.backend.put(blob_id, blob_type, content, meta)

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
