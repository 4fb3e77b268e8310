"""`blobstore verify --storage s3://...`: re-hash every blob object, report and quarantine bad ones.

The same checks as every read (VerifyingBackend over the backend: metadata,
length, SHA-256), run over a listing of the prefix, a few objects at a time.
Like the file-system scrub it needs no server and is safe beside running
replicas: objects are written once, and one quarantined by a replica while the
walk runs is counted as vanished. The report is the file-system scrub's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import obstore

from blobstore.errors import BlobNotFound, DataLoss
from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.storage.filesystem.scrub import Problem, VerifyReport
from blobstore.storage.objectstore import keys
from blobstore.storage.objectstore.backend import ObjectStoreBackend
from blobstore.storage.objectstore.errors import translated
from blobstore.storage.objectstore.location import Location
from blobstore.storage.verifying import VerifyingBackend

CONCURRENCY = 8
CHUNK = 1024 * 1024


class _Scrubbed(ObjectStoreBackend):
    """The backend, remembering where it moved each bad object (or moving nothing)."""

    def __init__(self, location: Location, move: bool) -> None:
        super().__init__(location)
        self.move = move
        self.moved: dict[BlobId, str] = {}

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        if self.move:
            self.moved[blob_id] = await self.quarantine_to(blob_id, reason) or ""


async def verify_objects(
    location: Location,
    *,
    quarantine: bool = True,
    on_problem: Callable[[Problem], None] | None = None,
) -> VerifyReport:
    backend = _Scrubbed(location, quarantine)
    backend.open()
    verifying = VerifyingBackend(backend)
    report = VerifyReport()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def check(key: str) -> None:
        blob_id = blob_id_from_digest(key)
        async with gate:
            try:
                stream = await verifying.get_stream(blob_id, CHUNK)
                try:
                    size = sum([len(chunk) async for chunk in stream])
                finally:
                    await stream.aclose()
            except BlobNotFound:
                report.vanished += 1
                return
            except DataLoss as exc:
                moved = backend.moved.get(blob_id)
                # Keys as paths: the report's labels (relative to the prefix).
                problem = Problem(Path(key), blob_id, str(exc), Path(moved) if moved else None)
                report.problems.append(problem)
                if on_problem is not None:
                    on_problem(problem)
                return
        report.checked += 1
        report.bytes_checked += size

    with translated():
        async for batch in obstore.list(backend.store):
            names = [meta["path"] for meta in batch]
            await asyncio.gather(*(check(name) for name in names if keys.is_blob_key(name)))
    backend.close()
    return report
