"""The backends the contract suite runs against, each with the test's hooks into its medium.

Every backend the server can be built with is here: a new one joins the suite by
adding a parameter. `corrupt` damages a stored copy behind the backend's back
(the flipped bit on disk, the object overwritten in the bucket), `leftovers`
lists what a streamed put may leave behind (temporary files or objects, and
multipart uploads neither completed nor aborted).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest

from blobstore.ids import BlobId, hex_digest
from blobstore.storage.base import BlobBackend
from blobstore.storage.eviction import Caps, EvictingBackend
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.objectstore import ObjectStoreBackend, parse
from blobstore.storage.read_cache import ReadCache
from tests.faults import flip_byte, pack_record
from tests.rpc_helpers import blob_path
from tests.seaweedfs import SeaweedFS


@dataclass
class Kit:
    """A backend under test and what the test may do to its medium."""

    name: str
    backend: BlobBackend
    corrupt: Callable[[BlobId], None]
    leftovers: Callable[[], list[str]]
    large: int
    """A streamed size that takes the backend's large-blob path."""


@pytest.fixture(params=["memory", "filesystem", "packs", "objectstore", "read-cache", "evicting"])
async def kit(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Kit]:
    if request.param == "memory":
        memory = MemoryBackend()

        def corrupt_memory(blob_id: BlobId) -> None:
            memory.corrupt(blob_id, b"not the content")

        yield Kit("memory", memory, corrupt_memory, lambda: [], 1 << 20)
    elif request.param == "read-cache":
        behind = MemoryBackend()
        cache = ReadCache(behind, tmp_path / "cache", max_bytes=4 << 20, max_blob_bytes=1 << 20)
        cache.open()

        def corrupt_behind(blob_id: BlobId) -> None:
            behind.corrupt(blob_id, b"not the content")

        yield Kit("read-cache", cache, corrupt_behind, lambda: [], 1 << 20)
    elif request.param in ("filesystem", "packs", "evicting"):
        folder = tmp_path / "data"
        small = "packs" if request.param == "packs" else "files"
        files = FileSystemBackend(folder, io_threads=4, small_blob_store=small)
        files.open()
        # The chain the server runs on a folder: the usage index over the files, capped.
        evicting = EvictingBackend(files, Caps(max_bytes=1 << 30), snapshot=folder / "usage")
        await evicting.start()

        def corrupt_file(blob_id: BlobId) -> None:
            found = pack_record(folder, blob_id)
            if found is not None:
                flip_byte(found[0], found[1] + found[2] - 5)  # content's or metadata's last
                return
            path = blob_path(folder, blob_id)
            content = bytearray(path.read_bytes())
            content[-1] ^= 0xFF
            path.write_bytes(bytes(content))

        def temp_files() -> list[str]:
            return [p.name for p in (folder / "tmp").glob("*")] if (folder / "tmp").exists() else []

        backend: BlobBackend = evicting if request.param == "evicting" else files
        yield Kit(request.param, backend, corrupt_file, temp_files, 3 << 20)
        await evicting.stop()
        files.close()
    else:
        weed: SeaweedFS = request.getfixturevalue("seaweedfs")
        for name, value in weed.env.items():
            monkeypatch.setenv(name, value)
        prefix = f"contract/{uuid.uuid4().hex}"
        objects = ObjectStoreBackend(parse(weed.url(prefix)))
        objects.open()
        raw = weed.store(prefix)

        def overwrite_object(blob_id: BlobId) -> None:
            key = hex_digest(blob_id)
            attributes = obstore.get(raw, key, options={"head": True}).attributes
            size = obstore.head(raw, key)["size"]
            obstore.put(raw, key, b"x" * size, attributes=attributes)  # same size, same metadata

        def temporaries() -> list[str]:
            objects = [meta["path"] for meta in obstore.list(raw, prefix="tmp/").collect()]
            return objects + weed.incomplete_uploads(prefix)

        yield Kit("objectstore", objects, overwrite_object, temporaries, 20 << 20)
        objects.close()
