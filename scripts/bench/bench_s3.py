"""`scripts/bench.py --storage s3`: the object-store backend against obstore on the same store.

    python scripts/bench.py --storage s3            # starts its own SeaweedFS (weed mini)
    python scripts/bench.py --storage s3 --quick    # tiny sizes: shows it works

One run starts SeaweedFS (tests/seaweedfs.py: credentials, fsync) and three of
our servers: on `s3://` (as shipped), on `s3://` with a read cache
(`--cache-dir`), and on a local folder. Trials interleave, so machine noise hits
every row alike:

- put_small / get_small: 1 KiB blobs, 16 concurrent callers, through our
  service vs. the same conditional PUT / GET done directly with obstore;
- put_large / get_large: one large blob at a time (streamed through our
  service: PutStream, GetStream) vs. obstore's multipart put / streamed get;
- get_small_cached: our s3 server with a read cache vs. our file-system server.

Our puts go through the Python client (AsyncBlobClient: its streamed put promises the
id, which lets the server upload in place); our reads through a bare stub, as the
echo's: the client's own end-to-end hash of what it received is load-generator work
that obstore's direct read does not do either.

Beside get_small and get_large it prints what bounds them, as ratios to obstore:
the same calls to the gRPC echo (scripts/bench/bench_echo.py: a BlobService that
stores nothing, pinned like ours) and to the forwarder (bench_forward.py: Get and
GetStream only forwarded to obstore, no checks, no hashing, pinned like ours). Our
server answers over Python gRPC and asks the store with the same obstore calls, so
it cannot beat the forwarder: where the forwarder is under the target, the target
is out of reach for any Python gRPC front on obstore (docs/scale-out.md). Then the
server CPU per call of our s3 server and the forwarder (all threads, psutil), which
moves less with other load than the rates. `--baseline-tree DIR` adds our server
from another source tree to the get rows (A/B in the same minutes).

Each row is ours / the reference, with its target (issue 13): ≥ 0.70 small,
≥ 0.80 large, ≥ 0.80 cached. The server side is pinned to one core, the load
generator (and obstore's direct calls) to the others (bench_procs.CpuSplit);
SeaweedFS runs unpinned, shared by both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import obstore
import psutil
from bench_procs import (
    ECHO_READY,
    ROOT,
    SERVER_READY,
    Child,
    CpuSplit,
    pin_self,
    python_argv,
    start_baseline_server,
    start_child,
    start_echo_server,
)

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import AsyncBlobClient

sys.path.insert(0, str(ROOT))
from tests.seaweedfs import SeaweedFS

KIB = 1024
MIB = 1024 * KIB
TARGETS = {"put_small": 0.70, "get_small": 0.70, "put_large": 0.80, "get_large": 0.80}
CACHED_TARGET = 0.80

Call = Callable[[], Awaitable[Any]]


async def closed_loop(
    make: Callable[[int], Call], callers: int, seconds: float
) -> tuple[float, int]:
    """Operations per second of `callers` loops each calling make(i)() until time is up,
    and how many operations that was."""
    done = 0
    end = time.monotonic() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        call = make(i)
        while time.monotonic() < end:
            await call()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return done / (time.monotonic() - started), done


async def timed(call: Call, reps: int) -> float:
    """Median seconds of `reps` calls, one at a time."""
    times = []
    for _ in range(reps):
        started = time.monotonic()
        await call()
        times.append(time.monotonic() - started)
    return statistics.median(times)


def _server(
    name: str, work: Path, cpus: frozenset[int] | None, *args: str, env: dict[str, str]
) -> Child:
    return start_child(
        name,
        python_argv("-m", "blobstore.cli", "serve", "--address", "127.0.0.1:0", *args),
        cpus=cpus,
        log_path=work / f"{name.replace(' ', '-')}.log",
        ready=SERVER_READY,
        env=env,
    )


class S3Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.quick = bool(args.quick)
        self.trials = args.trials or (1 if self.quick else 5)
        self.seconds = args.seconds or (0.5 if self.quick else 2.0)
        self.large = (args.large_mib or (8 if self.quick else 64)) * MIB
        self.reps = args.reps or (2 if self.quick else 3)
        self.callers = args.concurrency
        self.work = work
        self.baseline_tree: Path | None = args.baseline_tree
        self.rates: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.rates.setdefault(name, []).append(value)

    async def measured(
        self, name: str, pid: int | None, run: Callable[[], Awaitable[tuple[float, int]]]
    ) -> None:
        """Adds the rate of run() (which returns it and its count of operations) to `name`;
        with the pid of the server it called, also that server's CPU microseconds per
        operation, which other load on the machine moves less than the rate."""
        before = _cpu(pid) if pid is not None else 0.0
        rate, ops = await run()
        if pid is not None:
            used = _cpu(pid) - before
            self.cpu.setdefault(name, []).append(used / max(ops, 1) * 1e6)
        self.add(name, rate)

    async def run(self) -> None:
        split = CpuSplit.detect()
        weed = SeaweedFS(self.work / "seaweedfs").start()
        children: list[Child] = []
        try:
            env = weed.env
            prefix = f"bench/{uuid.uuid4().hex}"
            url = weed.url(prefix)
            ours = _server("s3 server", self.work, split.server, "--storage", url, env=env)
            children.append(ours)
            cache = str(self.work / "cache")
            children.append(
                _server(
                    "s3 cached server",
                    self.work,
                    split.server,
                    "--storage",
                    url,
                    "--cache-dir",
                    cache,
                    env=env,
                )
            )
            data = str(self.work / "data")
            children.append(
                _server("fs server", self.work, split.server, "--data-dir", data, env=env)
            )
            readers = {
                "ours": ours,
                "echo": start_echo_server(self.work / "echo.log", split.server),
                "forward": start_child(
                    "forward server",
                    python_argv(str(BENCH / "bench_forward.py"), "--storage", url),
                    cpus=split.server,
                    log_path=self.work / "forward.log",
                    ready=ECHO_READY,
                    env=env,
                ),
            }
            if self.baseline_tree is not None:
                readers["base"] = start_baseline_server(
                    self.baseline_tree.resolve(),
                    self.work / "baseline",
                    split.server,
                    env,
                    ("--storage", url),
                )
            children.extend(child for name, child in readers.items() if name != "ours")
            pin_self(split.load)
            print(f"SeaweedFS at {weed.endpoint}; {split.describe()}", flush=True)
            direct = weed.store(f"{prefix}-direct")
            clients = [AsyncBlobClient(child.address, timeout=120) for child in children[:3]]
            # Reads through our service go through a bare stub, exactly as the echo's do: the
            # client library's own end-to-end hash of what it received (and, for a large blob,
            # its unary attempt before GetStream and its join into one bytes) is work in the
            # load generator that obstore's direct read does not do either.
            options = [("grpc.max_receive_message_length", 8 * MIB)]
            channels = {
                name: grpc.aio.insecure_channel(child.address, options=options)
                for name, child in readers.items()
            }
            try:
                stubs = {
                    name: Reader(pb_grpc.BlobServiceStub(channel), readers[name].pid)
                    for name, channel in channels.items()
                }
                await self._measure(direct, clients[0], clients[1], clients[2], stubs)
            finally:
                for channel in channels.values():
                    await channel.close(None)
                for client in clients:
                    await client.close()
        finally:
            for child in children:
                child.stop()
            weed.stop()

    async def _measure(
        self,
        direct: Any,
        ours: AsyncBlobClient,
        cached: AsyncBlobClient,
        files: AsyncBlobClient,
        readers: dict[str, Reader],
    ) -> None:
        pool = [os.urandom(KIB) for _ in range(32 if self.quick else 256)]
        keys = [uuid.uuid4().hex for _ in pool]
        ids = [(await ours.put_bytes(blob)).info.blob_id for blob in pool]
        for blob in pool:
            await files.put_bytes(blob)
        for key, blob in zip(keys, pool, strict=True):
            await obstore.put_async(
                direct, key, blob, mode="create", attributes={"blob-type": "Binary"}
            )
        for blob_id in ids:  # warm the read cache
            await cached.get(blob_id)

        def pick(i: int, items: list[Any]) -> Callable[[], Any]:
            state = {"n": i}

            def next_item() -> Any:
                state["n"] = (state["n"] + 7) % len(items)
                return items[state["n"]]

            return next_item

        gets = [pb.GetRequest(id=blob_id) for blob_id in ids]
        small: dict[str, tuple[Callable[[int], Call], int | None]] = {
            "put_small ours": (lambda i: lambda: ours.put_bytes(os.urandom(KIB)), None),
            "put_small obstore": (
                lambda i: (
                    lambda: obstore.put_async(
                        direct,
                        uuid.uuid4().hex,
                        os.urandom(KIB),
                        mode="create",
                        attributes={"blob-type": "Binary"},
                    )
                ),
                None,
            ),
            "get_small obstore": (
                lambda i: (lambda nxt: lambda: _get_all(direct, nxt()))(pick(i, keys)),
                None,
            ),
            "get_small echo": (lambda i: lambda: readers["echo"].stub.Get(ECHO_GET), None),
            "get_small_cached ours": (
                lambda i: (lambda nxt: lambda: cached.get(nxt()))(pick(i, ids)),
                None,
            ),
            "get_small_cached filesystem": (
                lambda i: (lambda nxt: lambda: files.get(nxt()))(pick(i, ids)),
                None,
            ),
        }
        for name in ("ours", "forward", "base"):
            if name in readers:
                small[f"get_small {name}"] = (
                    functools.partial(_unary_gets, readers[name].stub, pick, gets),
                    readers[name].pid,
                )
        large_blob = os.urandom(self.large)
        large_id = (await ours.put_bytes(large_blob)).info.blob_id
        await obstore.put_async(direct, "large", large_blob)
        chunk = 1 * MIB

        async def put_large_ours() -> None:
            await ours.put_bytes(os.urandom(16) + large_blob[16:])

        async def put_large_direct() -> None:
            content = os.urandom(16) + large_blob[16:]

            async def parts() -> Any:
                for start in range(0, len(content), chunk):
                    yield content[start : start + chunk]

            await obstore.put_async(
                direct, uuid.uuid4().hex, parts(), chunk_size=5 * MIB, max_concurrency=2
            )

        large_request = pb.GetStreamRequest(id=large_id)
        echo_stream = pb.GetStreamRequest(id=str(self.large))
        large: dict[str, tuple[Call, int | None]] = {
            "put_large ours": (put_large_ours, None),
            "put_large obstore": (put_large_direct, None),
            "get_large obstore": (lambda: _get_all(direct, "large", streamed=True), None),
            "get_large echo": (lambda: _drain(readers["echo"].stub.GetStream(echo_stream)), None),
        }
        for name in ("ours", "forward", "base"):
            if name in readers:
                large[f"get_large {name}"] = (
                    functools.partial(_streamed_get, readers[name].stub, large_request),
                    readers[name].pid,
                )

        async def timed_rate(call: Call) -> tuple[float, int]:
            return self.large / await timed(call, self.reps) / MIB, self.reps

        for trial in range(self.trials):
            for name in list(small) if trial % 2 == 0 else list(reversed(small)):
                make, server = small[name]
                loop = functools.partial(closed_loop, make, self.callers, self.seconds)
                await self.measured(name, server, loop)
            for name in list(large) if trial % 2 == 0 else list(reversed(large)):
                call, server = large[name]
                await self.measured(name, server, functools.partial(timed_rate, call))
            print(f"trial {trial + 1}/{self.trials} done", flush=True)

    def report(self) -> bool:
        rows = [
            ("put_small", "put_small ours", "put_small obstore", "ops/s", TARGETS["put_small"]),
            ("get_small", "get_small ours", "get_small obstore", "ops/s", TARGETS["get_small"]),
            ("put_large", "put_large ours", "put_large obstore", "MiB/s", TARGETS["put_large"]),
            ("get_large", "get_large ours", "get_large obstore", "MiB/s", TARGETS["get_large"]),
            (
                "get_small_cached",
                "get_small_cached ours",
                "get_small_cached filesystem",
                "ops/s",
                CACHED_TARGET,
            ),
        ]
        print(f"\n{'row':<18}{'ours':>10}{'reference':>11}  {'unit':<6}{'ratio':>7}{'target':>8}")
        ok = True
        for row, mine, reference, unit, target in rows:
            a, b = statistics.median(self.rates[mine]), statistics.median(self.rates[reference])
            ratio = a / b
            verdict = "PASS" if ratio >= target else "MISS"
            ok = ok and ratio >= target
            print(f"{row:<18}{a:>10.1f}{b:>11.1f}  {unit:<6}{ratio:>7.2f}{target:>8.2f}  {verdict}")
        print("reference: obstore on the same SeaweedFS (get_small_cached: our file-system server)")
        for row in ("get_small", "get_large"):
            obstore_rate = statistics.median(self.rates[f"{row} obstore"])
            for name, what in BOUNDS.items():
                if f"{row} {name}" in self.rates:
                    rate = statistics.median(self.rates[f"{row} {name}"])
                    print(
                        f"{'A/B' if name == 'base' else 'bound'}: {row} of {what}: "
                        f"{rate:.1f} = {rate / obstore_rate:.2f} x obstore"
                    )
        print("server CPU per call, median (min-max) over the trials:")
        for name, values in self.cpu.items():
            unit, scale = ("ms", 1e-3) if name.startswith("get_large") else ("us", 1.0)
            print(
                f"  {name:<20}{statistics.median(values) * scale:9.1f} {unit}"
                f"  ({min(values) * scale:.0f}-{max(values) * scale:.0f})"
            )
        return ok


BENCH = Path(__file__).resolve().parent
BOUNDS = {
    "echo": "a gRPC echo that stores nothing",
    "forward": "a gRPC server that only forwards to obstore (bench_forward.py)",
    "base": "our server from --baseline-tree",
}


ECHO_GET = pb.GetRequest(id="sha256:" + "0" * 64)


@dataclass(frozen=True)
class Reader:
    """A bare BlobService stub, and the pid of the server it calls."""

    stub: Any
    pid: int


def _cpu(pid: int) -> float:
    """The process's CPU seconds, of the threads that ended too (schedstat sums only live
    ones, and grpc's and the executor's threads come and go); 10 ms steps, fine over trials
    of seconds."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _unary_gets(
    stub: Any, pick: Callable[[int, list[Any]], Callable[[], Any]], gets: list[Any], i: int
) -> Call:
    """Caller i's Get: the next of `gets` in its own order, through a bare stub."""
    nxt = pick(i, gets)
    return lambda: stub.Get(nxt())


async def _streamed_get(stub: Any, request: pb.GetStreamRequest) -> int:
    return await _drain(stub.GetStream(request))


async def _drain(call: Any) -> int:
    return sum([len(reply.chunk) async for reply in call])


async def _direct_put(store: Any, key: str, blob: bytes) -> object:
    """What our backend does for a small put: one conditional PUT with user metadata."""
    return await obstore.put_async(
        store, key, blob, mode="create", attributes={"blob-type": "Binary", "blob-size": "1024"}
    )


async def _get_all(store: Any, key: str, streamed: bool = False) -> int:
    result = await obstore.get_async(store, key)
    if not streamed:
        return len(await result.bytes_async())
    return sum([len(chunk) async for chunk in result.stream(min_chunk_size=1 * MIB)])


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as folder:
        bench = S3Bench(args, Path(folder))
        asyncio.run(bench.run())
        ok = bench.report()
    return 0 if ok or args.quick else 1
