"""The usage index: every stored blob's size and last use, least recently used first.

Kept in memory (an OrderedDict: a use is a dict lookup, a time and a move to the
end, never a write to disk) by the EvictingBackend (eviction.py). It is made
durable cheaply: a snapshot of the whole index, written aside and renamed into
place every SNAPSHOT_INTERVAL while uses happen, and at a clean stop. At start-up
the index is rebuilt from the medium's listing (BlobBackend.scan: what is really
stored, with sizes and the time each was stored) merged with the snapshot (the
last uses, and exact sizes): a blob the snapshot does not know (stored after it
was written, before a crash) gets the time it was stored; an entry of the snapshot
whose blob is gone is dropped. A lost or damaged snapshot costs recency, never data.

With a snapshot, start-up loads it alone (one read, seconds for a million blobs) and
the listing is compared with it in the background while the server serves
(reconcile); without one, the listing is taken before serving (rebuild).

Snapshot format: b"BSU1", then per blob its 32-byte digest, content size (u64) and
last use (f64 seconds since the epoch), little-endian; in any order (written in the
order blobs were first stored, read back sorted by last use).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator, Set
from operator import itemgetter
from pathlib import Path

from blobstore.ids import PREFIX, BlobId, blob_id_from_digest, hex_digest
from blobstore.storage.base import StoredBlob

log = logging.getLogger(__name__)

MAGIC = b"BSU1"
_RECORD = struct.Struct("<32sQd")
SNAPSHOT_INTERVAL = 30.0
"""Seconds between snapshots while blobs are used (none while idle)."""


class Use:
    """One blob's entry: content size and last use."""

    __slots__ = ("size", "used")

    def __init__(self, size: int, used: float) -> None:
        self.size = size
        self.used = used


class UsageIndex:
    """Sizes and last uses, least recently used first; see the module docstring.

    Used on the event loop only (no locks): every method is a few dict operations.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[BlobId, Use] = OrderedDict()
        self.total_bytes = 0
        self.dirty = False
        self.clock = time.time

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self.entries

    def get(self, blob_id: BlobId) -> Use | None:
        return self.entries.get(blob_id)

    def touch(self, blob_id: BlobId) -> None:
        """Records a use of a known blob (an unknown one is ignored)."""
        use = self.entries.get(blob_id)
        if use is not None:
            use.used = self.clock()
            self.entries.move_to_end(blob_id)
            self.dirty = True

    def stored(self, blob_id: BlobId, size: int) -> None:
        """Records a put: a new entry, or a use of a known one."""
        use = self.entries.get(blob_id)
        if use is None:
            self.entries[blob_id] = Use(size, self.clock())
            self.total_bytes += size
        else:
            use.used = self.clock()
            self.entries.move_to_end(blob_id)
        self.dirty = True

    def pop(self, blob_id: BlobId) -> Use | None:
        use = self.entries.pop(blob_id, None)
        if use is not None:
            self.total_bytes -= use.size
            self.dirty = True
        return use

    def put_back(self, blob_id: BlobId, use: Use) -> None:
        """Returns an entry taken out (an eviction that failed) at the least recent end."""
        if blob_id not in self.entries:
            self.entries[blob_id] = use
            self.entries.move_to_end(blob_id, last=False)
            self.total_bytes += use.size

    def oldest(self) -> Iterator[tuple[BlobId, Use]]:
        return iter(self.entries.items())

    # -- persistence ----------------------------------------------------------------------

    def rebuild(self, listing: list[StoredBlob], known: dict[BlobId, tuple[int, float]]) -> None:
        """Replaces the index with what `listing` says is stored; the last uses (and sizes)
        of the blobs in `known` (the snapshot, least recently used first) come from it."""
        on_disk = {blob.blob_id for blob in listing}
        remembered = [
            (used, blob_id, size) for blob_id, (size, used) in known.items() if blob_id in on_disk
        ]
        new = sorted((b.last_use, b.blob_id, b.size) for b in listing if b.blob_id not in known)
        # Both in order of last use: merged in one pass, no sort of the whole.
        self.entries = OrderedDict(
            (blob_id, Use(size, used)) for used, blob_id, size in heapq.merge(remembered, new)
        )
        self.total_bytes = sum(use.size for use in self.entries.values())
        self.dirty = False

    def load(self, path: Path) -> bool:
        """Replaces the index with the snapshot at `path` as it is (no listing); False if
        there is none or it is damaged (then the index is empty)."""
        prefix = PREFIX
        records = read_records(path)
        self.entries = OrderedDict(
            (BlobId(prefix + digest.hex()), Use(size, used)) for digest, size, used in records or ()
        )
        self.total_bytes = sum(use.size for use in self.entries.values())
        self.dirty = False
        return records is not None

    def reconcile(
        self, listing: list[StoredBlob], kept: set[BlobId], removed: Set[BlobId] = frozenset()
    ) -> tuple[int, int]:
        """Makes the index agree with a listing taken while it was in use (ids it knew may
        come with size 0): entries of blobs not listed are dropped, unless in `kept`
        (stored since); blobs it did not know join as used when they were stored, unless
        in `removed` (deleted or evicted since: listed, but gone).
        Returns (added, dropped). All at once: the server runs compare() on a thread
        and apply() on the event loop instead (eviction.py)."""
        return self.apply(*compare(listing, list(dict.keys(self.entries))), kept, removed)

    def apply(
        self,
        new: list[StoredBlob],
        gone: list[BlobId],
        kept: set[BlobId],
        removed: Set[BlobId] = frozenset(),
    ) -> tuple[int, int]:
        """What compare() found, applied: a few dict operations per change, none per blob
        that is in both. Returns (added, dropped)."""
        added = 0
        for blob in new:
            # A blob removed after the listing saw it would come back as an entry
            # without a file (counted against the cap, never found); one stored again
            # after that is in the index already.
            if blob.blob_id not in self.entries and blob.blob_id not in removed:
                self.entries[blob.blob_id] = Use(blob.size, blob.last_use)
                self.total_bytes += blob.size
                added += 1
        dropped = 0
        for blob_id in gone:
            if blob_id not in kept and self.pop(blob_id) is not None:
                dropped += 1
        return added, dropped

    def records(self) -> Records:
        """The entries' ids and uses, for save_snapshot() on another thread (Use values may
        still change meanwhile: a later use, saved next time).

        Taken from the dict under the OrderedDict, in the order the ids were first
        stored, not in the order of use: two flat lists, 50-70 ms for a million entries
        on a loaded 2-core machine, where walking the OrderedDict's own order into
        (id, use) pairs took 1.5-2.5 s on the event loop. The file is put back in
        order of use when it is read (load, load_snapshot)."""
        self.dirty = False
        entries = self.entries
        return list(dict.keys(entries)), list(dict.values(entries))


Records = tuple[list[BlobId], list[Use]]
"""Ids and their uses, in the same (any) order."""


def compare(
    listing: list[StoredBlob], known: list[BlobId]
) -> tuple[list[StoredBlob], list[BlobId]]:
    """The blobs listed that the index did not know (those the listing stat'ed: with a
    time), and the `known` ids not listed. Plain Python loops, for a thread: a million
    blobs take seconds, during which the event loop gets the GIL every few ms."""
    listed = {blob.blob_id for blob in listing}
    new = [blob for blob in listing if blob.last_use]
    gone = [blob_id for blob_id in known if blob_id not in listed]
    return new, gone


def save_snapshot(path: Path, records: Records) -> None:
    """Writes the snapshot aside and renames it into place (no fsync: losing it only
    costs recency, and the rename never leaves a half-written one in place)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    pack = _RECORD.pack
    with open(temp, "wb") as out:
        out.write(MAGIC)
        out.write(
            b"".join(
                pack(bytes.fromhex(hex_digest(blob_id)), use.size, use.used)
                for blob_id, use in zip(*records, strict=True)
            )
        )
    os.replace(temp, path)


def read_snapshot(path: Path) -> memoryview | None:
    """The records of the snapshot at `path`; None if there is none or it is damaged
    (logged, and a damaged one removed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("usage snapshot %s unreadable (%s): last uses start from file times", path, exc)
        return None
    body = memoryview(data)[len(MAGIC) :]
    if data[: len(MAGIC)] != MAGIC or len(body) % _RECORD.size:
        log.warning("usage snapshot %s is damaged: last uses start from file times", path)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return body


def load_snapshot(path: Path) -> dict[BlobId, tuple[int, float]]:
    """The snapshot's entries, least recently used first; empty if none or damaged."""
    return {
        blob_id_from_digest(digest.hex()): (size, used)
        for digest, size, used in read_records(path) or ()
    }


def read_records(path: Path) -> list[tuple[bytes, int, float]] | None:
    """The snapshot's records (digest, size, last use), least recently used first (a stable
    sort: the records of blobs used at the same time keep the file's order); None if
    there is none or it is damaged."""
    body = read_snapshot(path)
    if body is None:
        return None
    return sorted(_RECORD.iter_unpack(body), key=itemgetter(2))
