"""Storms of writers, for the tests that kill something mid-storm and then check that every
acknowledged blob reads back.

- WriteStorm: threads in the test's process putting random blobs through one client until
  stopped (a replica or a storage node is killed; the client lives on).
- storm_until_killed: writers in spawned processes, one client a thread, each acknowledgement
  logged to a file, until the server is killed -9 under them (kill -9 of the server itself);
  kill_mid_storm and ack_lines, its parts, for a storm whose processes a test writes itself.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

from blobstore.client import BlobClient
from blobstore.errors import BlobStoreError
from blobstore.retry import RetryPolicy
from tests.processes import ServerProcess
from tests.rpc_helpers import sha256_id, wait_until


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


@dataclass(frozen=True)
class Turn:
    """One put (or batch) of a storm writer: process `seed`, thread `worker`, its `i`-th turn,
    with the thread's own random source."""

    seed: int
    worker: int
    i: int
    rng: random.Random


StormPut = Callable[[BlobClient, Turn], str]
"""A writer's turn: puts through the client, returns the line that logs what was acknowledged.
A module-level function (it is sent to a spawned process)."""


def _storm_process(target: str, seed: int, ack_path: str, writers: int, put: StormPut) -> None:
    """`writers` threads, each with its own client, take turns at `put` for a minute or until a
    put fails (the server is gone); each acknowledged turn's line is appended to `ack_path`."""
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        with BlobClient(target, timeout=30, retry=RetryPolicy.off()) as client:
            for i in range(100_000):
                if time.monotonic() > deadline:
                    return
                try:
                    line = put(client, Turn(seed, n, i, rng))
                except BlobStoreError:
                    return
                with lock, open(ack_path, "a") as acks:
                    acks.write(line + "\n")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def storm_until_killed(
    server: ServerProcess,
    put: StormPut,
    ack_dir: Path,
    *,
    writers: int,
    enough: int,
    timeout: float,
    processes: int = 2,
) -> list[str]:
    """Storms `server` from `processes` spawned processes of `writers` threads each, kills it
    -9 once `enough` turns are acknowledged (or `timeout` seconds pass: then the test fails),
    and returns the acknowledged turns' lines (logged in `ack_dir`)."""
    ack_paths = [ack_dir / f"acks-{n}.txt" for n in range(processes)]
    context = multiprocessing.get_context("spawn")
    storms = [
        context.Process(target=_storm_process, args=(server.target, n, str(path), writers, put))
        for n, path in enumerate(ack_paths)
    ]
    kill_mid_storm(server, storms, lambda: len(ack_lines(ack_paths)) >= enough, timeout)
    return ack_lines(ack_paths)


def kill_mid_storm(
    server: ServerProcess, storms: Sequence[BaseProcess], ready: Callable[[], bool], timeout: float
) -> None:
    """Starts `storms` (processes writing to `server`), kills the server -9 once `ready()`
    holds (or `timeout` seconds pass: then the test fails) and waits for the storms to end,
    killing any that linger."""
    for storm in storms:
        storm.start()
    storming = wait_until(ready, timeout=timeout)
    server.kill()
    for storm in storms:
        storm.join(timeout=60)
        if storm.is_alive():
            storm.kill()
    assert storming, "the storm never got going"


def ack_lines(paths: Sequence[Path]) -> list[str]:
    """The lines the storm processes have logged so far in their ack files `paths`."""
    return [line for p in paths if p.exists() for line in p.read_text().splitlines()]
