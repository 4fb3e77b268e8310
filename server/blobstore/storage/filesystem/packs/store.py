"""The pack store: small blobs kept as records in append-only segments, not a file each.

The group committer (group_commit.py) appends each batch of small puts here
with one writev and one fdatasync (appender.py) and that is all a put writes:
no blob file, no later syncfs checkpoint. An in-memory index (index.py) says
where each record is; it is rebuilt at start-up from the segments' index files
(index_file.py) or, where one is missing or not believed, by reading the segment
(segment.py), cutting back a torn tail. A read is one pread of the
record (on the event loop when it is in the page cache, as read.py does for
small files), checked like every read by VerifyingBackend one layer up.

Removal appends a tombstone: delete() and eviction, and quarantine(), which
first copies the record's bytes to quarantine/ for analysis, so a restart
does not bring the blob back. Space comes back when compaction (compact.py)
copies a mostly-dead segment's live records forward and drops the segment.

Blobs larger than the committer takes (and streamed puts) stay files
(publish.py); the backend asks this store first and the files second.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Container, Sequence
from pathlib import Path

from blobstore.errors import DataLoss, Unavailable
from blobstore.ids import BlobId, blob_id_from_digest, hex_digest
from blobstore.model import Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.base import StoredBlob
from blobstore.storage.filesystem.blob_file import (
    HEADER_SIZE,
    FileContent,
    blob_info,
    decode_header,
    file_header,
)
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.os_calls import (
    fsync_dir,
    io_error,
    pread_all,
    pread_cached,
    write_all,
)
from blobstore.storage.filesystem.packs.appender import Appender
from blobstore.storage.filesystem.packs.index import Location, PackIndex
from blobstore.storage.filesystem.packs.index_file import SUFFIX as INDEX_SUFFIX
from blobstore.storage.filesystem.packs.index_file import load_index, write_index
from blobstore.storage.filesystem.packs.segment import (
    RECORD_OVERHEAD,
    RECORD_PREFIX,
    SUFFIX,
    Entry,
    encode_tombstone,
    list_segments,
    read_segment,
    torn_append,
)

log = logging.getLogger(__name__)

NOT_CACHED = object()
"""What a read that must not wait returns when the record is not in the page cache."""


def digest_of(blob_id: BlobId) -> bytes:
    return bytes.fromhex(hex_digest(blob_id))


def decode(blob_id: BlobId, raw: bytes) -> Blob:
    """The blob in a record's blob file part; DataLoss if its header or metadata is broken."""
    header = file_header(blob_id, raw[:HEADER_SIZE], len(raw))
    content_end = HEADER_SIZE + header.size
    return Blob(blob_info(blob_id, header, raw[content_end:]), raw[HEADER_SIZE:content_end])


class PackStore:
    """The segments under packs/ and their index; see the module docstring."""

    def __init__(self, layout: FileSystemLayout, segment_bytes: int) -> None:
        self.layout = layout
        self.folder = layout.root / "packs"
        self.index = PackIndex()
        self.appender = Appender(self.folder, self.index, segment_bytes, layout)
        self._duplicates: set[bytes] = set()

    # -- start-up -----------------------------------------------------------------------------

    def open(self) -> None:
        """Reads every segment back into the index, in order (blocking)."""
        if not self.folder.is_dir():
            self.layout.make_folder(self.folder, quietly=True)
        started = time.monotonic()
        segments = list_segments(self.folder)
        _remove_orphans(self.folder, {path for _, path in segments})
        entries = indexed = 0
        for sequence, path in segments:
            size = path.stat().st_size
            found = load_index(path, size)
            if found is not None:
                indexed += 1
                self._load(sequence, path, size, found)
                entries += len(found)
                continue
            scan = read_segment(path)
            if scan.valid_end < scan.size:
                # An append that never finished (never acknowledged): cut back so the bytes
                # are not read again at every start. Anything else there is damage, kept
                # in quarantine/ for analysis.
                with open(path, "r+b") as file:
                    file.seek(scan.valid_end)
                    tail = file.read()
                    kept = None
                    if not torn_append(tail):
                        kept = self._keep_for_analysis(f"pack-tail-{path.name}", tail)
                    file.truncate(scan.valid_end)
                    os.fsync(file.fileno())
                log.warning(
                    "pack segment %s: cut back a torn tail of %d bytes%s",
                    path.name,
                    len(tail),
                    "" if kept is None else f" (not an entry cut short: kept as {kept})",
                )
            for start, end in scan.skipped:
                log.error(
                    "pack segment %s: bytes %d..%d are no record (damaged); skipped",
                    path.name,
                    start,
                    end,
                )
            self._load(sequence, path, scan.valid_end, scan.entries)
            entries += len(scan.entries)
            with contextlib.suppress(OSError):  # only slower without: read again next time
                write_index(path, scan if scan.valid_end == scan.size else read_segment(path))
        if segments:
            self.appender.next_sequence = segments[-1][0] + 1
            log.info(
                "read %d pack segment(s) (%d from their index files) in %.2f s: %d record(s) "
                "and tombstone(s), %d blob(s) stored",
                len(segments),
                indexed,
                time.monotonic() - started,
                entries,
                len(self.index),
            )

    def _load(self, sequence: int, path: Path, size: int, entries: list[Entry]) -> None:
        """Applies a segment's entries to the index, in order."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.index.add_segment(sequence, fd, size, os.fstat(fd).st_mtime)
        self.index.load(
            sequence,
            (
                (
                    digest,
                    None
                    if header is None
                    else Location(
                        sequence,
                        offset + RECORD_PREFIX,
                        length - RECORD_OVERHEAD,
                        header.size,
                        header.blob_type,
                    ),
                )
                for digest, offset, length, header, _ in entries
            ),
        )

    def close(self) -> None:
        self.appender.close()
        self.index.close_all()

    # -- puts (the group committer's log) ------------------------------------------------------

    def append_records(self, parts: list[bytes], digests: Sequence[bytes]) -> None:
        """Appends a group commit: parts come three to a record (encode_record), one record
        per digest. Records of blobs already stored are not written again (filed() then
        answers created=False)."""
        assert len(parts) == 3 * len(digests)
        self._duplicates.clear()  # filed() asks only about this append (a failed one's go)
        with self.appender.lock:
            kept: list[bytes] = []
            new: list[tuple[bytes, list[bytes]]] = []
            for n, digest in enumerate(digests):
                if digest in self.index:
                    self._duplicates.add(digest)
                    continue
                record = parts[3 * n : 3 * n + 3]
                kept += record
                new.append((digest, record))
            if not kept:
                return
            sequence, offset = self.appender.append(kept)
            for digest, record in new:
                length = sum(len(p) for p in record)
                header = decode_header(record[0][RECORD_PREFIX:])
                file_length = length - RECORD_OVERHEAD
                where = Location(
                    sequence, offset + RECORD_PREFIX, file_length, header.size, header.blob_type
                )
                self.index.put(digest, where)
                offset += length

    def filed(self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta) -> PutResult:
        """The committer's answer for a blob whose record append_records() made durable
        (on the committer thread, right after it)."""
        digest = digest_of(blob_id)
        if digest in self._duplicates:
            # Another put of the id got there first (both found it absent): answered from
            # that copy if it holds exactly `data`, as a put of a stored blob always is.
            self._duplicates.discard(digest)
            existing = self.existing(blob_id, data)
            if existing is not None:
                return PutResult(existing, created=False)
            raise Unavailable(f"blob {blob_id} kept changing while it was stored; retry")
        location = self.index.get(digest)
        if location is not None:
            self.layout.usage.added(location.file_length)
        return PutResult(BlobInfo(blob_id, blob_type, len(data), meta), created=True)

    # -- reads --------------------------------------------------------------------------------

    def holds(self, blob_id: BlobId) -> bool:
        return digest_of(blob_id) in self.index

    def location(self, blob_id: BlobId) -> Location | None:
        return self.index.get(digest_of(blob_id))

    def read(self, blob_id: BlobId, *, wait: bool) -> bytes | object | None:
        """The record's blob file part; None if the blob has no record; NOT_CACHED if `wait`
        is False and the bytes are not all in the page cache. Raises OSError."""
        held = self.index.acquire(digest_of(blob_id))
        if held is None:
            return None
        location, fd = held
        try:
            length, offset = location.file_length, location.offset
            if wait:
                return pread_all(fd, length, offset)
            raw = pread_cached(fd, length, length, offset)
            return NOT_CACHED if raw is None else raw
        finally:
            self.index.release(location)

    def read_blob(self, blob_id: BlobId) -> Blob | None:
        """The stored blob (blocking); None if it has no record; DataLoss if it is broken."""
        try:
            raw = self.read(blob_id, wait=True)
        except OSError as exc:
            raise io_error(exc, "read the blob") from None
        if raw is None:
            return None
        assert isinstance(raw, bytes)
        return decode(blob_id, raw)

    def existing(self, blob_id: BlobId, data: bytes | FileContent) -> BlobInfo | None:
        """The stored blob's metadata if its record holds exactly `data` (which hashes to the
        id; bytes, or a streamed put's temp file); a record that does not is quarantined and
        None returned (blocking)."""
        location = self.location(blob_id)
        if location is None:
            return None
        if isinstance(data, FileContent):
            if data.size != location.size:
                self.quarantine(blob_id, "content differs from a put of the same id")
                return None
            data = pread_all(data.fd, data.size, HEADER_SIZE)
        try:
            blob = self.read_blob(blob_id)
        except DataLoss as exc:
            self.quarantine(blob_id, str(exc))
            return None
        if blob is None:
            return None
        if blob.data != data:
            self.quarantine(blob_id, "content differs from a put of the same id")
            return None
        return blob.info

    # -- removal ------------------------------------------------------------------------------

    def quarantine(self, blob_id: BlobId, reason: str) -> bool:
        """Takes a broken record out of service: its bytes copied to quarantine/, a tombstone
        appended, the index entry dropped. False if the blob has no record here. A record
        found sound when checked again (a put replaced it meanwhile) is kept."""
        if not self.holds(blob_id):
            return False
        self.take_out(blob_id, reason)
        return True

    def take_out(self, blob_id: BlobId, reason: str) -> Path | None:
        """quarantine(): where the record's bytes went (None: no record, or a sound one)."""
        digest = digest_of(blob_id)
        with self.appender.lock:
            raw = self.read(blob_id, wait=True)
            if raw is None:
                return None
            assert isinstance(raw, bytes)
            problem = problem_of(blob_id, raw)
            if problem is None:
                log.warning(
                    "kept %s: reported corrupt (%s), but the stored record is sound",
                    blob_id,
                    reason,
                )
                return None
            target = self._keep_for_analysis(hex_digest(blob_id), raw)
            self.appender.append([encode_tombstone(digest)])
            self.index.remove(digest)
        self.layout.usage.removed(len(raw))
        log.error("quarantined %s to %s: %s", blob_id, target, problem)
        return target

    def _keep_for_analysis(self, name: str, raw: bytes) -> Path:
        """Writes `raw` (a record's blob file part: a blob file) to quarantine/, durably."""
        folder = self.layout.quarantine_dir
        target = folder / f"{name}.{time.time_ns()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = self.layout.in_folder(folder, lambda: os.open(target, flags, 0o644))
        try:
            write_all(fd, [raw])
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(folder)
        return target

    def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        """Appends one tombstone per stored blob (one write, one fdatasync); returns those
        that had a record, in the given order. Raises OSError."""
        with self.appender.lock:
            present: dict[bytes, BlobId] = {}
            for blob_id in blob_ids:
                digest = digest_of(blob_id)
                if digest in self.index:
                    present.setdefault(digest, blob_id)
            if not present:
                return []
            self.appender.append([encode_tombstone(d) for d in present])
            for digest in present:
                self.index.remove(digest)
        return list(present.values())

    def listing(self, known: Container[BlobId] = ()) -> list[StoredBlob]:
        """Every blob with a record: content size, and the time its segment was written."""
        found = []
        for digest, location, written in self.index.items():
            blob_id = blob_id_from_digest(digest.hex())
            if blob_id in known:
                found.append(StoredBlob(blob_id, 0, 0.0))
            else:
                found.append(StoredBlob(blob_id, location.size, written))
        return found


def _remove_orphans(folder: Path, segments: set[Path]) -> None:
    """Index files whose segment is gone (compaction removes the index file first, but a
    crash may come between) and half-written ones."""
    for path in folder.glob(f"*{INDEX_SUFFIX}*"):
        if path.name.endswith(".tmp") or path.with_suffix(SUFFIX) not in segments:
            path.unlink(missing_ok=True)


def problem_of(blob_id: BlobId, raw: bytes) -> str | None:
    """What is wrong with a record's blob file part (header, metadata, hash), or None."""
    try:
        blob = decode(blob_id, raw)
    except DataLoss as exc:
        return str(exc)
    if hashlib.sha256(blob.data).hexdigest() != hex_digest(blob_id):
        return "content does not match its SHA-256 id"
    return None
