"""A batched put on the file-system backend: the new small blobs of one put_many are made
durable by a single journal append (one write, one fdatasync), never split across two."""

from __future__ import annotations

import hashlib
from pathlib import Path

from blobstore.ids import blob_id_from_digest
from blobstore.model import BlobType, PutResult
from blobstore.storage.base import PutItem
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.filesystem.journal import read_segment


def _item(data: bytes) -> PutItem:
    return PutItem(blob_id_from_digest(hashlib.sha256(data).hexdigest()), BlobType.BINARY, data)


async def test_one_put_many_is_one_journal_append(tmp_path: Path) -> None:
    # A byte cap far below the batch's size: a group is still never split.
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        committer = backend._committer
        assert committer is not None
        committer._max_batch_bytes = 1000
        appends: list[int] = []
        journal = committer._journal
        append = journal.append

        def counting(parts: list[bytes]) -> None:
            appends.append(len(parts))
            append(parts)

        journal.append = counting  # type: ignore[method-assign]
        items = [_item(bytes([i]) * 500) for i in range(40)]
        items.append(items[3])  # the same content twice in one batch
        outcomes = await backend.put_many(items)
        assert all(isinstance(o, PutResult) for o in outcomes)
        assert [o.created for o in outcomes if isinstance(o, PutResult)] == [True] * 40 + [False]
        assert len(appends) == 1, appends  # one write (and its one fdatasync) for all 40
        [segment] = sorted((tmp_path / "data" / "journal").glob("*.log"))
        assert len(read_segment(segment).records) == 40
        # Stored already: answered from the copies, nothing appended.
        again = await backend.put_many(items[:5])
        assert [o.created for o in again if isinstance(o, PutResult)] == [False] * 5
        assert len(appends) == 1
    finally:
        backend.close()
