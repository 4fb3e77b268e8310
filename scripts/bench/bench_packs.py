"""Files or packs for small blobs: put_small, get_small and batch_put, interleaved A/B.

    python scripts/bench/bench_packs.py [--trials 6] [--seconds 3]

Two servers from this tree, one per small-blob store (`--small-blob-store
files` and `packs`), each with its own data folder on the same disk; trials
alternate between them (A B, then B A, ...) so that both run in the same
minutes of a shared, noisy machine. Prints each workload's ops/s per store
(median of the trials) and the range of the per-trial ratios packs/files:
the figure docs/performance.md quotes. Not a unit test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench_load import Documents, GrpcCaller, get_request
from bench_procs import Child, cpu_seconds, start_blobstore_server

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb

STORES = ("files", "packs")
BATCH = 100
POOL = 500


async def drive(call: Callable[[int], Awaitable[object]], seconds: float, callers: int) -> int:
    """Runs `call(n)` from `callers` concurrent loops for `seconds`; returns the calls done."""
    deadline = time.monotonic() + seconds
    done = 0
    counter = iter(range(10**12))

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await call(next(counter))
            done += 1

    await asyncio.gather(*(loop() for _ in range(callers)))
    return done


async def bench(servers: dict[str, Child], trials: int, seconds: float, callers: int) -> None:
    callers_by_store = {name: GrpcCaller(child.address) for name, child in servers.items()}
    docs = {name: Documents() for name in servers}
    gets: dict[str, list[bytes]] = {}
    for name, caller in callers_by_store.items():
        await caller.ready()
        replies = [await caller.call_put(docs[name].put_request(10**9 + n)) for n in range(POOL)]
        gets[name] = [get_request(pb.PutResponse.FromString(r).id) for r in replies]
    rates: dict[tuple[str, str], list[float]] = {}
    costs: dict[tuple[str, str], list[float]] = {}  # server CPU microseconds per item
    sequence = {name: 0 for name in servers}

    def workloads(name: str) -> dict[str, tuple[Callable[[int], Awaitable[object]], int]]:
        caller, doc, pool = callers_by_store[name], docs[name], gets[name]

        def fresh() -> int:
            sequence[name] += 1
            return sequence[name]

        return {
            "put_small": (lambda n: caller.call_put(doc.put_request(fresh())), 1),
            "get_small": (lambda n: caller.call_get(pool[n % len(pool)]), 1),
            "batch_put": (
                lambda n: caller.call_batch_put(doc.batch_put_request(10**6 + fresh(), BATCH)),
                BATCH,
            ),
        }

    for trial in range(trials):
        order = STORES if trial % 2 == 0 else STORES[::-1]
        for workload in ("put_small", "get_small", "batch_put"):
            for name in order:
                call, items = workloads(name)[workload]
                pid = [servers[name].pid]
                started, cpu = time.monotonic(), cpu_seconds(pid)
                calls = await drive(call, seconds, callers)
                rate = calls * items / (time.monotonic() - started)
                cost = (cpu_seconds(pid) - cpu) * 1e6 / max(1, calls * items)
                rates.setdefault((workload, name), []).append(rate)
                costs.setdefault((workload, name), []).append(cost)
                print(
                    f"trial {trial} {workload:<10} {name:<6} {rate:9.1f} ops/s "
                    f"{cost:7.0f} us server CPU/item",
                    flush=True,
                )
    for title, table in (("ops/s", rates), ("server CPU us/item", costs)):
        print(f"\n{title:<20}{'files':>10}{'packs':>10}   packs/files (median, trial range)")
        for workload in ("put_small", "get_small", "batch_put"):
            files, packs = table[(workload, "files")], table[(workload, "packs")]
            ratios = [p / f for p, f in zip(packs, files, strict=True)]
            print(
                f"{workload:<20}{statistics.median(files):>10.1f}"
                f"{statistics.median(packs):>10.1f}"
                f"   {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )
    for caller in callers_by_store.values():
        await caller.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, help="where the data folders go (a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-packs-", dir=args.work_dir) as work:
        servers: dict[str, Child] = {}
        try:
            for name in STORES:
                folder = Path(work) / name
                folder.mkdir()
                env = {"BLOBSTORE_SMALL_BLOB_STORE": name}
                servers[name] = start_blobstore_server(folder, None, env)
            asyncio.run(bench(servers, args.trials, args.seconds, args.concurrency))
        finally:
            for child in servers.values():
                child.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
