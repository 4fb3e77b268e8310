"""A blob's object read as a stream of chunks of at most `chunk_size` bytes.

obstore hands out chunks of *at least* a given size (whatever the network
delivered, merged); the service promises chunks of about `chunk_size`, so
larger ones are cut here. A failure mid-stream is a store error (Unavailable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blobstore.model import BlobInfo
from blobstore.storage.objectstore.errors import translated

if TYPE_CHECKING:
    from obstore import BytesStream


class ObjectStream:
    """A BlobStream over an object GET; see the module docstring."""

    def __init__(self, info: BlobInfo, chunks: BytesStream, chunk_size: int) -> None:
        self.info = info
        self._chunks: BytesStream | None = chunks
        self._chunk_size = max(1, chunk_size)
        self._pending = memoryview(b"")

    def __aiter__(self) -> ObjectStream:
        return self

    async def __anext__(self) -> bytes:
        if not self._pending:
            if self._chunks is None:
                raise StopAsyncIteration
            with translated(self.info.blob_id):
                try:
                    self._pending = memoryview(await anext(self._chunks))
                except StopAsyncIteration:
                    self._chunks = None
            if self._chunks is None:
                raise StopAsyncIteration
        chunk, self._pending = self._pending[: self._chunk_size], self._pending[self._chunk_size :]
        return bytes(chunk)

    async def aclose(self) -> None:
        # Dropping obstore's stream closes its HTTP response.
        self._chunks = None
        self._pending = memoryview(b"")
