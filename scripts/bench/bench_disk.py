"""Machine ceilings that need no server: the disk and SHA-256.

- small files: write + fsync + rename of 1 KiB files by 16 threads, into
  256 shard folders like the store's (and, for comparison, the same plus an
  fsync of the shard folder, which the store does to make a put durable);
- sequential: write 64 MiB in 1 MiB writes, then fsync;
- SHA-256 over an in-memory buffer in 1 MiB updates (hashlib, as the store).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from bench_stats import Trial

MIB = 1024 * 1024
_CHUNK = MIB


def prepare_small_files(root: Path) -> None:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    for i in range(256):
        (root / "blobs" / f"{i:02x}").mkdir(parents=True, exist_ok=True)


def small_files(
    root: Path, *, threads: int, seconds: float, size: int, fsync_dir: bool, tag: str
) -> Trial:
    """Closed loop of `threads` writers for `seconds`; one op = one durable small file."""
    payload = os.urandom(size)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = time.perf_counter()
    deadline = start + seconds

    def writer(index: int) -> None:
        mine = latencies[index]
        n = 0
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                name = f"{tag}-{index}-{n}"
                tmp = root / "tmp" / name
                shard = root / "blobs" / f"{n % 256:02x}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, shard / name)
                if fsync_dir:
                    dir_fd = os.open(shard, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
                mine.append(time.perf_counter() - t0)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    cpu0 = time.process_time()
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    merged = [x for per_thread in latencies for x in per_thread]
    return Trial(
        ops=len(merged),
        seconds=elapsed,
        payload_bytes=len(merged) * size,
        latencies=merged,
        loader_cpu=(time.process_time() - cpu0) / elapsed,
    )


def sequential_write(root: Path, *, size: int) -> Trial:
    """Writes `size` bytes in 1 MiB writes to a new file, fsyncs it, and deletes it."""
    chunk = os.urandom(min(_CHUNK, size))
    path = root / f"seq-{time.time_ns()}"
    cpu0 = time.process_time()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        written = 0
        while written < size:
            view = memoryview(chunk)[: size - written]
            while view:
                n = os.write(fd, view)
                view = view[n:]
                written += n
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    path.unlink()
    return Trial(
        ops=1,
        seconds=elapsed,
        payload_bytes=size,
        latencies=[elapsed],
        loader_cpu=(time.process_time() - cpu0) / elapsed,
    )


def sha256_speed(data: bytes) -> Trial:
    """Hashes `data` in 1 MiB updates, as the store hashes a stream."""
    view = memoryview(data)
    cpu0 = time.process_time()
    start = time.perf_counter()
    hasher = hashlib.sha256()
    for offset in range(0, len(data), _CHUNK):
        hasher.update(view[offset : offset + _CHUNK])
    hasher.hexdigest()
    elapsed = time.perf_counter() - start
    return Trial(
        ops=1,
        seconds=elapsed,
        payload_bytes=len(data),
        latencies=[elapsed],
        loader_cpu=(time.process_time() - cpu0) / elapsed,
    )
