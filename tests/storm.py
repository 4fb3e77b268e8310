"""A storm of writers: threads putting random blobs through one client until stopped.

Used by the tests that kill something mid-storm (a replica, a storage node) and then
check that every acknowledged blob reads back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from blobstore.client import BlobClient
from blobstore.errors import BlobStoreError
from tests.rpc_helpers import sha256_id


class WriteStorm:
    """`writers` threads put blobs of random `sizes` through `client`. With `tolerate_refusals`
    a put the service refuses (a BlobStoreError) is counted in `refused`, not acknowledged;
    anything else a writer meets ends it and lands in `crashed`."""

    def __init__(
        self,
        client: BlobClient,
        writers: int,
        sizes: Sequence[int],
        *,
        tolerate_refusals: bool = False,
    ) -> None:
        self.acknowledged: list[str] = []
        self.refused: list[BlobStoreError] = []
        self.crashed: list[BaseException] = []
        self._client = client
        self._sizes = sizes
        self._tolerate = tolerate_refusals
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in range(writers)]

    def _write(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not self._stop.is_set():
                data = rng.randbytes(rng.choice(self._sizes))
                try:
                    result = self._client.put_bytes(data)
                except BlobStoreError as exc:
                    if not self._tolerate:
                        raise
                    self.refused.append(exc)  # not acknowledged: nothing was promised
                    continue
                assert result.info.blob_id == sha256_id(data)
                with self._lock:
                    self.acknowledged.append(result.info.blob_id)
        except BaseException as exc:
            self.crashed.append(exc)

    def __enter__(self) -> WriteStorm:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, count: int, deadline: float) -> int:
        """Waits until `count` puts are acknowledged (or `deadline`, a monotonic time, passes,
        or a writer crashed); returns how many are."""
        while len(self.acknowledged) < count and time.monotonic() < deadline and not self.crashed:
            time.sleep(0.05)
        return len(self.acknowledged)

    def stop(self, join_timeout: float = 120) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(join_timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
