"""Compaction: a sealed segment that is mostly dead is copied forward and dropped whole.

Deletes, evictions and quarantines only append tombstones; the space comes back
here. A sealed segment whose live records hold less than LIVE_FRACTION of its
bytes (or none) is rewritten: its live records are appended to the active
segment (as a group commit is: one writev and fdatasync a chunk, under the
writer's lock, the index moved to the copies), then the segment is unlinked.
With an eviction cap, old segments empty out first (LRU evicts the oldest
blobs), so eviction ends in dropping whole old segments. The active segment is
sealed early once SEAL_DEAD_BYTES of it are dead, so that dead records never
take more than that plus half of the sealed segments' bytes.

Tombstones matter only while an older segment may still hold a record of
their blob: a tombstone whose blob is not live is copied forward too, unless
the segment is the oldest one left (then nothing older can come back).

A crash in the middle leaves both copies of a record; the later one wins when
the log is read back, and the segment is compacted again.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from blobstore.ids import blob_id_from_digest
from blobstore.storage.filesystem.os_calls import fsync_dir
from blobstore.storage.filesystem.packs.index import Location
from blobstore.storage.filesystem.packs.index_file import remove_index, write_index
from blobstore.storage.filesystem.packs.segment import (
    RECORD_PREFIX,
    Entry,
    read_segment,
    scan_segment,
    segment_name,
)
from blobstore.storage.filesystem.packs.store import PackStore

log = logging.getLogger(__name__)

LIVE_FRACTION = 0.5
"""A sealed segment whose live records take less than this share of it is compacted."""
CHUNK_BYTES = 4 * 1024 * 1024
"""Most bytes copied by one append (the writer's lock is held that long)."""
SEAL_DEAD_BYTES = 1024 * 1024
"""The active segment is sealed early (and compacted) once this much of it is dead, and
more than half: under an eviction cap smaller than a segment, dead records would
otherwise wait for the segment to fill."""


class Compactor:
    """Runs compaction on a thread of its own, when asked (after a segment is sealed or
    blobs are removed)."""

    def __init__(self, store: PackStore, live_fraction: float = LIVE_FRACTION) -> None:
        self._store = store
        self._live_fraction = live_fraction
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-compact")
        self._pending = False

    def request(self, sealed: int | None = None) -> None:
        """Looks for segments to compact soon (coalesced: one pass queued at a time);
        `sealed`: a segment just sealed, whose index file is written first."""
        with contextlib.suppress(RuntimeError):  # shut down
            if sealed is not None:
                self._thread.submit(self._index, sealed)
            if self._pending:
                return
            self._pending = True
            self._thread.submit(self._pass)

    def _index(self, sequence: int) -> None:
        path = self._store.folder / segment_name(sequence)
        try:
            scan = read_segment(path)
            if scan.valid_end == scan.size:  # a torn tail is cut back (and indexed) at start
                write_index(path, scan)
        except FileNotFoundError:
            pass  # compacted away meanwhile
        except OSError as exc:
            log.warning("no index file for pack segment %s (read at start): %s", path.name, exc)

    def stop(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _pass(self) -> None:
        self._pending = False
        try:
            self.run_once()
        except OSError as exc:
            log.warning("pack compaction stopped (tried again later): %s", exc)

    def run_once(self) -> int:
        """Compacts every sealed segment that is due; returns how many were dropped."""
        dropped = 0
        appender = self._store.appender
        for sequence, size, live in self._store.index.segments():
            if live >= self._live_fraction * size and live > 0:
                continue
            if sequence == appender.active:
                if size - live < SEAL_DEAD_BYTES:
                    continue
                with appender.lock:
                    if sequence != appender.active:
                        continue  # sealed meanwhile: the next pass takes it
                    appender.seal()
            self.compact(sequence)
            dropped += 1
        return dropped

    def compact(self, sequence: int) -> None:
        store = self._store
        path = store.folder / segment_name(sequence)
        oldest = min(s for s, _, _ in store.index.segments()) == sequence
        data = path.read_bytes()  # sealed: nobody appends to it any more
        scan = scan_segment(data)
        chunk: list[Entry] = []
        size = 0
        for entry in scan.entries:
            chunk.append(entry)
            size += entry.length
            if size >= CHUNK_BYTES:
                self._copy(sequence, data, chunk, keep_tombstones=not oldest)
                chunk, size = [], 0
        self._copy(sequence, data, chunk, keep_tombstones=not oldest)
        with store.appender.lock:
            # A live record the scan did not find is one damaged since it was indexed (its
            # header): out of service like any damaged record, so the segment can go.
            for digest, _ in store.index.records_in(sequence):
                blob_id = blob_id_from_digest(digest.hex())
                store.take_out(blob_id, "record damaged (found by compaction)")
            left = store.index.records_in(sequence)
            if left:
                log.error("pack segment %d still holds %d record(s): kept", sequence, len(left))
                return
            remove_index(path)  # first: a stale index file must not outlive its segment
            path.unlink(missing_ok=True)
            fsync_dir(store.folder)
            store.index.drop_segment(sequence)
        log.info("compacted pack segment %s (%d bytes)", path.name, scan.size)

    def _copy(
        self, sequence: int, data: bytes, chunk: list[Entry], *, keep_tombstones: bool
    ) -> None:
        """Appends the live records (and needed tombstones) of `chunk` to the active segment
        and points the index at the copies."""
        if not chunk:
            return
        index = self._store.index
        with self._store.appender.lock:
            parts: list[bytes] = []
            moved: list[tuple[bytes, Location, int]] = []
            at = 0
            for entry in chunk:
                where = index.get(entry.digest)
                if entry.header is not None:
                    if where is None or (where.segment, where.offset) != (
                        sequence,
                        entry.file_offset,
                    ):
                        continue  # dead: removed, or stored again later
                    moved.append((entry.digest, where, at))
                elif not keep_tombstones or where is not None:
                    continue
                parts.append(data[entry.offset : entry.offset + entry.length])
                at += entry.length
            if not parts:
                return
            target, offset = self._store.appender.append(parts)
            for digest, where, relative in moved:
                copy = where._replace(segment=target, offset=offset + relative + RECORD_PREFIX)
                index.put(digest, copy)
