"""A batched put on the file-system backend: the new small blobs of one put_many are made
durable by a single journal append (one write, one fdatasync), never split across two."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
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

        def counting(parts: list[bytes], digests: Sequence[bytes] = ()) -> None:
            appends.append(len(parts))
            append(parts, digests)

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


async def test_concurrent_batches_and_single_puts_each_get_their_own_outcomes(
    tmp_path: Path,
) -> None:
    # Groups queued together are gathered into one commit; each caller still gets exactly
    # its own items' outcomes (a group once grew by the items committed with it).
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        committer = backend._committer
        assert committer is not None
        journal = committer._journal
        append = journal.append
        appends: list[int] = []

        def slow_first(parts: list[bytes], digests: Sequence[bytes] = ()) -> None:
            appends.append(len(parts))
            if len(appends) == 1:
                time.sleep(0.3)  # the rest queue up meanwhile and are gathered together
            append(parts, digests)

        journal.append = slow_first  # type: ignore[method-assign]
        groups = [[_item(b"%d-%d" % (g, i)) for i in range(30)] for g in range(6)]
        singles = [_item(b"single-%d" % i) for i in range(20)]
        # Groups first in the queue (a single put queues itself sooner than a group does).
        batches = [asyncio.ensure_future(backend.put_many(group)) for group in groups]
        await asyncio.sleep(0.05)
        results = await asyncio.gather(
            *batches, *(backend.put(s.blob_id, s.blob_type, s.data) for s in singles)
        )
        for group, outcomes in zip(groups, results[: len(groups)], strict=True):
            assert isinstance(outcomes, list) and len(outcomes) == len(group)
            assert [o.info.blob_id for o in outcomes if isinstance(o, PutResult)] == [
                item.blob_id for item in group
            ]
        for single, result in zip(singles, results[len(groups) :], strict=True):
            assert isinstance(result, PutResult) and result.info.blob_id == single.blob_id
        assert len(appends) < len(groups) + len(singles), "nothing was committed together"
    finally:
        backend.close()
