"""What a data folder holds, kept up to date as the server runs: blob files and their bytes.

The metrics endpoint reports it (storage/filesystem/metrics.py) without scanning
the folder per scrape: the folder is counted once, on a thread, when metrics are
turned on at start-up, and then every blob published (publish.py) or moved to
quarantine (layout.py) adjusts the figures. Bytes are file bytes (header, content
and metadata block), what the blobs take on disk before block rounding.

A blob published while the start-up count runs may be counted twice (by the walk
and as a change): the figures are exact once `counted` is true, up to such races,
which leave an error of at most the puts made during the count. Blobs in the pack
store (packs/) are counted from its index, with the walk; a record's bytes are those
of the blob file it holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class StoreUsage:
    """Blob files and bytes in a data folder; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base_blobs = 0
        self._base_bytes = 0
        self._blobs = 0  # changes since the count began (or since start, if never counted)
        self._bytes = 0
        self.counted = False
        self.quarantined = 0
        """Files the server moved to quarantine/ since it started (each a failed check)."""

    @property
    def blobs(self) -> int:
        return self._base_blobs + self._blobs

    @property
    def bytes(self) -> int:
        return self._base_bytes + self._bytes

    def added(self, file_bytes: int) -> None:
        with self._lock:
            self._blobs += 1
            self._bytes += file_bytes

    def removed(self, file_bytes: int) -> None:
        with self._lock:
            self._blobs -= 1
            self._bytes -= file_bytes
            self.quarantined += 1

    def count(self, blobs_dir: Path, packed: Callable[[], tuple[int, int]] | None = None) -> None:
        """Walks blobs/??/* once and takes its totals as the base (blocking: run on a thread).

        `packed`: the blobs and bytes of the pack store (packs/), taken with the walk."""
        started = time.monotonic()
        with self._lock:
            self._blobs = self._bytes = 0  # what changes from here on comes on top of the walk
            blobs, total = packed() if packed is not None else (0, 0)
        try:
            with os.scandir(blobs_dir) as shards:
                for shard in shards:
                    if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(shard.path) as files:
                        for entry in files:
                            try:
                                stat = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue  # quarantined while we walked
                            blobs += 1
                            total += stat.st_size
        except OSError as exc:
            log.warning("could not count the blobs in %s for the metrics: %s", blobs_dir, exc)
            return
        with self._lock:
            self._base_blobs, self._base_bytes = blobs, total
            self.counted = True
        log.info(
            "counted %d blob(s), %d bytes in %.1f s (for the metrics)",
            blobs,
            total,
            time.monotonic() - started,
        )

    def count_in_background(
        self, blobs_dir: Path, packed: Callable[[], tuple[int, int]] | None = None
    ) -> threading.Thread:
        thread = threading.Thread(
            target=self.count, args=(blobs_dir, packed), name="blob-usage-count", daemon=True
        )
        thread.start()
        return thread
