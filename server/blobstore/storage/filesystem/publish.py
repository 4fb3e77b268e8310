"""Publishing a blob file: temp file → write → fsync → link(2) → fsync of the shard folder.

link(2) is atomic and never replaces, so the first writer of an id wins and
readers only ever see complete files; a crash leaves at most debris in tmp/,
removed at the next start. A put is answered from a copy already in place
only if that copy holds exactly the put's content (read.matching_copy); one that
is broken, differs, or is not a regular file is quarantined, and the put stores
its own. Both the unary put (store) and the streamed put (writer.py) end in
publish(); `durable=False` is the group-commit road, where a journal record
already covers the blob and a checkpoint syncs it later. A tmp/ or shard folder
deleted (or replaced by a file) under the server is made again (layout.in_folder).
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
from collections.abc import Callable

from blobstore.errors import DataLoss, Unavailable
from blobstore.ids import BlobId
from blobstore.model import NO_META, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.filesystem.blob_file import (
    HEADER_SIZE,
    FileContent,
    encode_header,
    encode_meta,
)
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.os_calls import (
    fsync_dir,
    io_error,
    unlink_quietly,
    write_all,
)
from blobstore.storage.filesystem.read import BlobReader

_ANONYMOUS_TEMP = hasattr(os, "O_TMPFILE")


class Publisher:
    """The write side of a FileSystemBackend (synchronous: runs on its pool threads)."""

    def __init__(self, layout: FileSystemLayout, reader: BlobReader) -> None:
        self._layout = layout
        self._reader = reader
        self._root_fd: int | None = None
        self._anonymous_temp = False
        self._temp_prefix = f"{layout.tmp}/{secrets.token_hex(6)}-"
        self._temp_seq = itertools.count()
        self.other_copy: Callable[[BlobId, bytes | FileContent], BlobInfo | None] | None = None
        """Where else a copy may be stored (the pack store): asked first by existing()."""

    def open(self, root_fd: int) -> None:
        """Starts publishing through `root_fd`, the data folder's descriptor."""
        self._root_fd = root_fd
        self._anonymous_temp = _ANONYMOUS_TEMP and os.path.isdir("/proc/self/fd")

    def store(
        self,
        blob_id: BlobId,
        blob_type: BlobType,
        data: bytes,
        meta: BlobMeta = NO_META,
        *,
        check: bool = True,
        durable: bool = True,
    ) -> PutResult:
        """Writes and publishes a whole blob; `check`: look for a matching stored copy first."""
        if check:
            existing = self.existing(blob_id, data)
            if existing is not None:
                return PutResult(existing, created=False)
        info = BlobInfo(blob_id, blob_type, len(data), meta)
        meta_block = encode_meta(meta)
        parts = [encode_header(blob_type, len(data), meta_block), data, meta_block]
        if self._anonymous_temp:
            fd = self._create_anonymous()
            if fd is not None:
                try:
                    self._write(fd, parts, durable)
                    return self.publish(
                        f"/proc/self/fd/{fd}", info, data, anonymous=True, durable=durable
                    )
                finally:
                    os.close(fd)  # an anonymous file not linked by now vanishes with it
        fd, tmp_path = self.create_temp()
        try:
            try:
                self._write(fd, parts, durable)
            finally:
                os.close(fd)
        except BaseException:
            unlink_quietly(tmp_path)
            raise
        return self.publish(tmp_path, info, data, durable=durable)

    @staticmethod
    def _write(fd: int, parts: list[bytes], durable: bool) -> None:
        try:
            write_all(fd, parts)
            if durable:
                os.fsync(fd)
        except OSError as exc:
            raise io_error(exc, "store the blob") from None

    def _create_anonymous(self) -> int | None:
        """An unnamed file in tmp/ (O_TMPFILE), or None if the file system has none.

        It needs no name, no unlink afterwards, and leaves no debris after a
        crash: two directory updates fewer per put than a named temp file.
        """
        tmp, flags = self._layout.tmp, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
        try:
            return self._layout.in_folder(tmp, lambda: os.open(tmp, flags, 0o644))
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._anonymous_temp = False
                return None
            raise io_error(exc, "create a temporary file") from None

    def create_temp(self) -> tuple[int, str]:
        """A new named file in tmp/, open for writing (and reading: a put of an id already
        stored compares the stored copy with it)."""
        # Unique within this server's run (O_EXCL catches any clash); debris of earlier
        # runs is removed at start-up.
        path = f"{self._temp_prefix}{next(self._temp_seq)}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = self._layout.in_folder(self._layout.tmp, lambda: os.open(path, flags, 0o644))
        except OSError as exc:
            raise io_error(exc, "create a temporary file") from None
        return fd, path

    def existing(self, blob_id: BlobId, content: bytes | FileContent) -> BlobInfo | None:
        """The stored blob's metadata if its copy holds exactly `content` (bytes, or the
        content of an open temp file); a copy that does not is quarantined so that the
        put stores a sound one, and None returned."""
        if self.other_copy is not None:
            found = self.other_copy(blob_id, content)
            if found is not None:
                return found
        try:
            return self._reader.matching_copy(blob_id, content)
        except DataLoss as exc:
            reason = str(exc)
        try:
            self._layout.quarantine(blob_id, reason)
        except OSError as exc:
            raise io_error(exc, "quarantine a corrupt blob") from None
        return None

    def publish(
        self,
        tmp_path: str,
        info: BlobInfo,
        content: bytes | FileContent,
        *,
        anonymous: bool = False,
        durable: bool = True,
    ) -> PutResult:
        """Links the fsynced temp file into place; the first writer of an id wins.

        `content`: the blob's content (bytes, or the temp file's), to compare with a
        copy already in place.
        `anonymous`: tmp_path is /proc/self/fd/N of an O_TMPFILE file, linked
        with linkat(AT_SYMLINK_FOLLOW) - os.link uses that only when given a
        folder descriptor (ignored, as both paths are absolute).
        `durable=False`: the shard folder is not fsynced (a journal covers the blob).
        """
        blob_id = info.blob_id
        final = self._layout.blob_path(blob_id)
        shard = os.path.dirname(final)
        root_fd = self._root_fd if anonymous else None

        def link() -> None:
            if root_fd is None:
                os.link(tmp_path, final)
            else:
                os.link(tmp_path, final, src_dir_fd=root_fd, dst_dir_fd=root_fd)

        try:
            # More than one round only if a copy in the way that did not match got quarantined.
            for _ in range(3):
                try:
                    self._layout.in_folder(shard, link)
                except FileExistsError:
                    existing = self.existing(blob_id, content)
                    if existing is not None:
                        return PutResult(existing, created=False)
                    continue
                try:
                    if durable:
                        fsync_dir(shard)
                except OSError:
                    # Not durable, so not acknowledged: take it back so a retry writes it again.
                    unlink_quietly(final)
                    raise
                self._layout.usage.added(
                    HEADER_SIZE + info.size + (len(encode_meta(info.meta)) if info.meta else 0)
                )
                return PutResult(info, created=True)
            raise Unavailable(f"blob {blob_id} kept changing while it was stored; retry")
        except OSError as exc:
            raise io_error(exc, "publish the blob") from None
        finally:
            if not anonymous:
                unlink_quietly(tmp_path)
