#!/usr/bin/env python3
"""What the server's shape costs: echo servers that differ in one design choice, side by side.

    python scripts/bench/bench_variants.py [--trials 4] [--seconds 2]

Runs unary Put (1 KiB in, 32 B out) with the benchmark's load generator
(16 callers, pinned like bench.py) against echo servers that store nothing:

    aio          grpc.aio, as ours and as bench.py's ceiling
    aio+1 hop    the same, each call first hands a no-op to a thread pool
    sync         grpc.server with a 16-thread pool instead of asyncio
    aio+durable  aio, and Put stores the 1 KiB durably in one thread hop (temp
                 file, write, fsync, link, folder fsync): put_small's floor
                 without canonicalising, hashing, checks or the guard
    sync+durable the same in the thread-pool server, inline in the handler
    aio+batched, aio+journal, aio+pack
                 aio+durable with the puts that arrive together made durable
                 together (bench_commit.py): the group-commit strategies

Trials are interleaved, so noise from other work hits every variant alike.
The first two give the CPU cost of one run_in_executor round trip; sync and
sync+durable, what leaving asyncio would gain (phase 1 recommendation 8, not
decided); aio+pack, what a pack format would gain over the journal (left for
a decision). Both are open, which is why these experiments stay.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Awaitable
from pathlib import Path

from bench_load import KIB, Documents, GrpcCaller, closed_loop
from bench_procs import Child, CpuSplit, pin_self, start_echo_server
from bench_stats import Summary, Trial

VARIANTS = {
    "aio": [],
    "aio+1 hop": ["--hops", "1"],
    "sync": ["--style", "sync"],
    "aio+durable": ["--durable-dir", "{work}/aio"],
    "sync+durable": ["--style", "sync", "--durable-dir", "{work}/sync"],
    "aio+batched": ["--durable-dir", "{work}/batched", "--group-commit", "batched"],
    "aio+journal": ["--durable-dir", "{work}/journal", "--group-commit", "journal"],
    "aio+pack": ["--durable-dir", "{work}/pack", "--group-commit", "pack"],
}


async def measure(servers: dict[str, Child], trials: int, seconds: float) -> dict[str, Summary]:
    docs = Documents()
    callers = {name: GrpcCaller(child.address) for name, child in servers.items()}
    results: dict[str, list[Trial]] = {name: [] for name in servers}
    try:
        for caller in callers.values():
            await caller.ready()
        for _ in range(trials):
            for name, caller in callers.items():

                def op(n: int, caller: GrpcCaller = caller) -> Awaitable[bytes]:
                    return caller.call_put(docs.put_request(n))

                results[name].append(
                    await closed_loop(
                        op,
                        concurrency=16,
                        seconds=seconds,
                        payload=KIB,
                        server_pids=[servers[name].pid],
                    )
                )
    finally:
        for caller in callers.values():
            await caller.close()
    return {name: Summary.of(trials) for name, trials in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    split = CpuSplit.detect()
    pin_self(split.load)
    work = Path(tempfile.mkdtemp(prefix="blobstore-variants-"))
    servers: dict[str, Child] = {}
    try:
        for i, (name, extra) in enumerate(VARIANTS.items()):
            servers[name] = start_echo_server(
                work / f"echo-{i}.log",
                split.server,
                *(arg.format(work=work) for arg in extra),
                name=name,
            )
        summaries = asyncio.run(measure(servers, args.trials, args.seconds))
    finally:
        for child in servers.values():
            child.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = summaries["aio"]
    print(f"{'variant':<16}{'ops/s':>9}{'vs aio':>8}{'p50 ms':>9}{'p99 ms':>9}{'cpu srv/load':>14}")
    for name, s in summaries.items():
        cpu = f"{s.server_cpu or 0:.2f}/{s.loader_cpu or 0:.2f}"
        print(
            f"{name:<16}{s.ops_per_s:>9.0f}{s.ops_per_s / base.ops_per_s:>8.2f}"
            f"{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}{cpu:>14}"
        )
    per_call = {name: (s.server_cpu or 1.0) / s.ops_per_s for name, s in summaries.items()}
    hop = (per_call["aio+3 hops"] - per_call["aio"]) / 3
    gate = per_call["aio+interceptor"] - per_call["aio"]
    print(
        f"server CPU per call: aio {per_call['aio'] * 1e6:.0f} us; one thread hop adds "
        f"{hop * 1e6:.0f} us; a pass-through interceptor adds {gate * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
