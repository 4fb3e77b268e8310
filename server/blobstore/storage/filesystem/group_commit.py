"""Group commit: the small puts that arrive together share one write and one fdatasync.

One committer thread takes every put waiting in its queue (up to a byte
cap), appends them to the journal (journal.py) with one write and one
fdatasync, files each blob through the backend (no fsync each), and then
resolves the whole batch with one wake-up of the event loop. While it syncs,
the next batch gathers, so the busier the server, the less each put pays
for durability - one sync per put cost a device flush each (~0.2 ms here)
and capped small puts at about 0.4 x a bare gRPC call.

A batched put (put_many, from BatchPut) is queued as one group that is never
split: all its records go in the same write and the same fdatasync, even past
the byte cap, so the batch is made durable by exactly one commit.

When a journal segment fills up, a checkpoint on a thread of its own makes
the blobs filed from it durable (the backend's `make_durable`, a syncfs) and
deletes the segment; stop() checkpoints what is left. Segments that outlive
a crash are replayed by the backend at start-up.

checkpoint() is the barrier a delete (or an eviction) passes first: it closes
the active segment and returns once every segment started before the call is
checkpointed, so no journal record of a blob removed afterwards is left for a
replay to bring back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from blobstore.errors import Unavailable
from blobstore.ids import BlobId, hex_digest
from blobstore.model import NO_META, BlobMeta, BlobType, PutResult
from blobstore.storage.filesystem.journal import encode_record

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Most content appended by one batch (one write, one fdatasync)."""

FileBlob = Callable[[BlobId, BlobType, bytes, BlobMeta], PutResult]
"""Files a blob whose journal record is durable: writes and links it, without fsync."""
TranslateError = Callable[[OSError, str], Exception]
"""Turns an OSError into the store error a caller sees (StorageFull, Unavailable)."""
OnBatch = Callable[[int, int, float], None]
"""Told of each journal append: puts in the batch, their content bytes, seconds the
write and fdatasync took (the metrics; called on the committer thread)."""


class CommitLog(Protocol):
    """Where the committer appends: the journal (journal.Journal), or the pack store
    (packs/commit_log.py), which has no segments to checkpoint."""

    def open(self) -> None: ...

    def append(self, parts: list[bytes], digests: Sequence[bytes] = ()) -> None: ...

    def holds_any(self, digests: Iterable[bytes]) -> bool: ...

    @property
    def next_sequence(self) -> int: ...

    def segments_before(self, sequence: int) -> list[Path]: ...

    def take_retired(self) -> list[Path]: ...

    def close(self) -> list[Path]: ...

    def retire(self, segment: Path) -> None: ...


@dataclass(eq=False, slots=True)
class _Put:
    blob_id: BlobId
    blob_type: BlobType
    data: bytes
    meta: BlobMeta
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[PutResult] = field(repr=False)


@dataclass(eq=False, slots=True)
class _Barrier:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = field(repr=False)


_STOP = object()


class GroupCommitter:
    """Batches durable small puts; see the module docstring."""

    def __init__(
        self,
        journal: CommitLog,
        file_blob: FileBlob,
        make_durable: Callable[[], None],
        translate: TranslateError,
        *,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._journal = journal
        self._file_blob = file_blob
        self._make_durable = make_durable
        self._translate = translate
        self._max_batch_bytes = max_batch_bytes
        # A list is one put_many's group: it goes into a single batch whole.
        self._queue: queue.SimpleQueue[_Put | list[_Put] | _Barrier | object] = queue.SimpleQueue()
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-checkpoint")
        self._thread = threading.Thread(target=self._run, name="blob-committer", daemon=True)
        self._stopped = False
        self._leftover: list[_Put] | None = None
        self.on_batch: OnBatch | None = None

    def start(self) -> None:
        self._journal.open()
        self._thread.start()

    def stop(self) -> None:
        """Commits what is queued, then checkpoints every segment this run wrote."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        # A put that raced with stop() and queued behind _STOP must not wait forever.
        late: list[_Put | _Barrier] = list(self._leftover or ())
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Barrier):
                late.append(item)
            else:
                late.extend(_group(item))
        for item in late:
            refused = Unavailable("server is shutting down; retry shortly")
            with contextlib.suppress(RuntimeError):
                item.loop.call_soon_threadsafe(_settle, [(item, refused)])
        self._checkpoints.shutdown(wait=True)
        for segment in self._journal.close():
            self._checkpoint(segment)

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        """Stores the blob durably; returns once its journal record is synced and it is filed."""
        if self._stopped:
            raise Unavailable("server is shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        item = _Put(blob_id, blob_type, data, meta, loop, loop.create_future())
        self._queue.put(item)
        # A cancelled caller leaves the put to finish (its future is then done and
        # skipped): that is harmless, and the next put of the same content finds it.
        return await item.future

    async def put_many(
        self, items: list[tuple[BlobId, BlobType, bytes, BlobMeta]]
    ) -> list[PutResult | Exception]:
        """Stores the blobs durably with one journal commit; one outcome per item, in order."""
        if self._stopped:
            raise Unavailable("server is shutting down; retry shortly")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        group = [_Put(*item, loop, loop.create_future()) for item in items]
        self._queue.put(group)
        outcomes: list[PutResult | Exception] = []
        for put in group:
            try:
                outcomes.append(await put.future)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def holds_any(self, blob_ids: Sequence[BlobId]) -> bool:
        """Whether a journal segment still on disk may hold a record of one of these blobs
        (then a removal of them must checkpoint() first)."""
        return self._journal.holds_any(bytes.fromhex(hex_digest(b)) for b in blob_ids)

    async def checkpoint(self) -> None:
        """Returns once every journal segment holding a record appended before this call
        is checkpointed (its blobs synced, the segment deleted). Raises Unavailable or
        StorageFull if a checkpoint fails (the segment stays)."""
        if self._stopped:
            raise Unavailable("server is shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        barrier = _Barrier(loop, loop.create_future())
        self._queue.put(barrier)
        await barrier.future

    # -- the committer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch, control = self._gather()
            if batch:
                self._commit(batch)
            if control is _STOP:
                return
            if isinstance(control, _Barrier):
                self._barrier(control)

    def _gather(self) -> tuple[list[_Put], object]:
        """The next batch, and what ended it: None, _STOP or a _Barrier (after the batch)."""
        first = self._leftover or self._queue.get()
        self._leftover = None
        if not isinstance(first, _Put | list):
            return [], first
        # The first group is taken whole, whatever its size: a put_many is never split.
        batch = _group(first)
        size = sum(len(item.data) for item in batch)
        while size < self._max_batch_bytes:
            try:
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(queued, _Put | list):
                return batch, queued
            group = _group(queued)
            more = sum(len(item.data) for item in group)
            if size + more > self._max_batch_bytes:
                self._leftover = group
                break
            batch += group
            size += more
        return batch, None

    def _barrier(self, barrier: _Barrier) -> None:
        # Retired segments already handed to the checkpoint thread are done before the
        # task below runs there (one thread, in order); it checks the disk anyway, so a
        # segment whose earlier checkpoint failed is tried again, not skipped.
        for segment in self._journal.close():
            self._checkpoints.submit(self._checkpoint, segment)
        boundary = self._journal.next_sequence

        def finish() -> None:
            outcome: Exception | None = None
            try:
                left = self._journal.segments_before(boundary)
                if left:
                    self._make_durable()
                    for segment in left:
                        self._journal.retire(segment)
            except OSError as exc:
                outcome = self._translate(exc, "checkpoint the journal before a delete")
            with contextlib.suppress(RuntimeError):
                barrier.loop.call_soon_threadsafe(_settle, [(barrier, outcome)])

        self._checkpoints.submit(finish)

    def _commit(self, batch: list[_Put]) -> None:
        firsts: dict[BlobId, _Put] = {}
        for item in batch:
            firsts.setdefault(item.blob_id, item)
        outcomes: dict[BlobId, PutResult | Exception] = {}
        try:
            outcomes = self._write(list(firsts.values()))
        except Exception as exc:  # keep the committer alive whatever a batch meets
            log.exception("group commit of %d puts failed", len(firsts))
            outcomes = {blob_id: exc for blob_id in firsts}
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Put, PutResult | Exception]]] = {}
        for item in batch:
            outcome = outcomes[item.blob_id]
            if isinstance(outcome, PutResult) and firsts[item.blob_id] is not item:
                outcome = PutResult(outcome.info, created=False)  # the same content, twice
            by_loop.setdefault(item.loop, []).append((item, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)

    def _write(self, puts: list[_Put]) -> dict[BlobId, PutResult | Exception]:
        parts: list[bytes] = []
        digests: list[bytes] = []
        for item in puts:
            digest = bytes.fromhex(hex_digest(item.blob_id))
            digests.append(digest)
            parts += encode_record(digest, item.blob_type, item.data, item.meta)
        outcomes: dict[BlobId, PutResult | Exception] = {}
        started = time.perf_counter()
        try:
            self._journal.append(parts, digests)
        except OSError as exc:
            # Translated (and so logged) once for the batch; each caller gets its own copy.
            error = self._translate(exc, "store the blob")
            for item in puts:
                outcomes[item.blob_id] = type(error)(*error.args)
        else:
            if self.on_batch is not None:
                self.on_batch(
                    len(puts), sum(len(p.data) for p in puts), time.perf_counter() - started
                )
            for item in puts:
                try:
                    outcomes[item.blob_id] = self._file_blob(
                        item.blob_id, item.blob_type, item.data, item.meta
                    )
                except Exception as exc:
                    outcomes[item.blob_id] = exc
        # Retired segments hold only records filed above or failed (never acknowledged).
        for segment in self._journal.take_retired():
            self._checkpoints.submit(self._checkpoint, segment)
        return outcomes

    def _checkpoint(self, segment: Path) -> None:
        try:
            self._make_durable()
            self._journal.retire(segment)
        except OSError as exc:
            # The segment stays; the next start replays it, which is only slower. Logged
            # (with its errno) by the translation; nobody waits for the error itself.
            self._translate(exc, "checkpoint a journal segment (kept, replayed at the next start)")


def _group(queued: object) -> list[_Put]:
    """The puts of one queue entry: a single put, or a put_many's group."""
    if isinstance(queued, _Put):
        return [queued]
    if isinstance(queued, list):
        return list(queued)  # a copy: the batch grows, the caller's group must not
    return []


def _settle(settled: Sequence[tuple[_Put | _Barrier, PutResult | Exception | None]]) -> None:
    for item, outcome in settled:
        if item.future.done():
            continue
        if isinstance(outcome, Exception):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)  # type: ignore[arg-type]  # None for a barrier
