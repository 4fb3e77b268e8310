"""Reads of pack records for the backend's event loop: in the page cache right there, else
on the pool (read.py does the same for small blob files).

A read is one pread of the record's blob file part: open, fstat and close are not
needed (the segment's descriptor is shared), so a cached read costs a few
microseconds on the loop; a thread round trip costs ten times that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from blobstore.errors import DataLoss
from blobstore.ids import BlobId
from blobstore.model import Blob, BlobInfo
from blobstore.storage.filesystem.os_calls import io_error
from blobstore.storage.filesystem.packs.store import NOT_CACHED, PackStore, decode

_T = TypeVar("_T")


class PackReads:
    def __init__(self, store: PackStore, pool: ThreadPoolExecutor) -> None:
        self._store = store
        self._pool = pool

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    async def read(self, blob_id: BlobId) -> Blob | None:
        """The blob's record (None: it has none); DataLoss if its header or metadata is
        broken (the content is checked against the id by VerifyingBackend)."""
        store = self._store
        try:
            raw = store.read(blob_id, wait=False)
            if raw is NOT_CACHED:
                raw = await self._run(lambda: store.read(blob_id, wait=True))
        except OSError as exc:
            raise io_error(exc, "read the blob") from None
        return decode(blob_id, raw) if isinstance(raw, bytes) else None

    async def match(self, blob_id: BlobId, data: bytes) -> BlobInfo | None:
        """The stored blob's metadata if its record holds exactly `data` (a re-put): compared
        on the loop when cached, else on the pool, which quarantines a record that differs.
        None: no record (any more)."""
        store = self._store
        with contextlib.suppress(OSError, DataLoss):
            raw = store.read(blob_id, wait=False)
            if isinstance(raw, bytes) and (blob := decode(blob_id, raw)).data == data:
                return blob.info
        try:
            return await self._run(lambda: store.existing(blob_id, data))
        except OSError as exc:
            raise io_error(exc, "read the stored copy") from None
