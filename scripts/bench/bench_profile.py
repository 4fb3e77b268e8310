#!/usr/bin/env python3
"""Profiles our server under one benchmark workload with py-spy, and summarises the hot spots.

    python scripts/bench/bench_profile.py put_small --seconds 20 [--native] [--out DIR]

Starts the server pinned like bench.py does (server core / load core), drives
the workload with the benchmark's load generator while `py-spy record` samples
the server process, then prints the functions with the most samples (self
and inclusive) and the share per source file. The raw collapsed stacks stay
in --out for a closer look (flamegraph.pl or speedscope read them).

py-spy is a dev dependency (pyproject.toml), in .venv/bin; elsewhere `pip install py-spy`
and put it on PATH or pass --py-spy. Attaching to another process needs
ptrace rights (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench_load import (
    KIB,
    MIB,
    Documents,
    GrpcCaller,
    LargeBlobs,
    Op,
    closed_loop,
    get_request,
    random_picker,
)
from bench_procs import ROOT, CpuSplit, pin_self, start_blobstore_server

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb

WORKLOADS = ["put_small", "get_small", "put_dedup", "batch_put", "put_large", "get_large"]
BATCH = 100  # blobs per BatchPut, as bench.py
_LINE = re.compile(r":\d+\)$")


async def drive(
    workload: str,
    target: str,
    pid: int,
    seconds: float,
    concurrency: int,
    start_sampling: Callable[[], object],
) -> str:
    """Runs `workload` for `seconds`; returns a one-line description of what it achieved.

    `start_sampling` is called once set-up (stored blobs to read) is done, so
    that only the workload itself is in the profile.
    """
    caller = GrpcCaller(target)
    await caller.ready()
    docs = Documents()
    try:
        if workload in ("put_large", "get_large"):
            return await _drive_large(workload, caller, docs, seconds, start_sampling)
        pool: list[bytes] = []
        if workload not in ("put_small", "batch_put"):
            for n in range(1000):
                reply = pb.PutResponse.FromString(await caller.call_put(docs.put_request(n)))
                pool.append(
                    get_request(reply.id) if workload == "get_small" else docs.put_request(n)
                )
        pick = random_picker(pool) if pool else None
        op: Op
        if workload == "put_small":
            op = lambda n: caller.call_put(docs.put_request(n + 10**9))  # noqa: E731
        elif workload == "batch_put":
            op = lambda n: caller.call_batch_put(docs.batch_put_request(n + 10**7, BATCH))  # noqa: E731
        elif workload == "get_small":
            assert pick is not None
            op = lambda n: caller.call_get(pick())  # noqa: E731
        else:
            assert pick is not None
            op = lambda n: caller.call_put(pick())  # noqa: E731
        start_sampling()
        items = BATCH if workload == "batch_put" else 1
        trial = await closed_loop(
            op,
            concurrency=concurrency,
            seconds=seconds,
            payload=KIB,
            server_pids=[pid],
            items=items,
        )
        return (
            f"{workload}: {trial.ops_per_s:.0f} ops/s, server CPU {trial.server_cpu or 0:.2f} "
            f"cores, while being sampled"
        )
    finally:
        await caller.close()


async def _drive_large(
    workload: str,
    caller: GrpcCaller,
    docs: Documents,
    seconds: float,
    start_sampling: Callable[[], object],
) -> str:
    blobs = LargeBlobs(64 * MIB)
    loop = asyncio.get_running_loop()
    get = b""
    if workload == "get_large":
        reply = await caller.stream_put(blobs.messages(f"{docs.nonce}-get".encode()))
        get = pb.GetStreamRequest(id=pb.PutResponse.FromString(reply).id).SerializeToString()
    start_sampling()
    start = loop.time()
    moved = 0
    rep = 0
    while loop.time() < start + seconds:
        if get:
            await caller.stream_get(get)
        else:
            await caller.stream_put(blobs.messages(f"{docs.nonce}-{rep}".encode()))
        moved += blobs.size
        rep += 1
    return f"{workload}: {moved / (loop.time() - start) / 1e6:.0f} MB/s while being sampled"


def summarise(raw: Path, top: int) -> str:
    """Self and inclusive sample shares per function, and self share per file."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    file_counts: collections.Counter[str] = collections.Counter()
    layer_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
        file_counts[_file_of(frames[-1])] += count
        layer_counts[_layer_of(frames)] += count
    if total == 0:
        return "no samples (is the process busy, and may py-spy attach to it?)"
    out = [f"{total} samples"]
    for title, counter in (
        ("self (where the CPU is)", self_counts),
        ("inclusive (what it is spent under)", incl_counts),
        ("self by file", file_counts),
        ("by layer (innermost module of ours on the stack, else the framework)", layer_counts),
    ):
        out.append(f"\n-- {title}")
        if counter is layer_counts:
            ours = sum(c for name, c in counter.items() if name.startswith("ours:"))
            out.append(f"{100 * ours / total:6.1f}%  (all of ours together)")
        for name, count in counter.most_common(top):
            out.append(f"{100 * count / total:6.1f}%  {name}")
    return "\n".join(out)


def _layer_of(frames: list[str]) -> str:
    """Which of our modules a sample is spent under; the framework if none."""
    for frame in reversed(frames):
        name = _file_of(frame)
        if name.startswith(("server/", "jsonrpc_bridge/")) and name not in _ENTRY_FILES:
            return f"ours: {name}"
    leaf = _file_of(frames[-1])
    if leaf.startswith(("threading.py", "concurrent/")):
        return "framework: thread pool (waiting for / handing over work)"
    return f"framework: {leaf}"


_ENTRY_FILES = {
    "server/blobstore/cli.py",
    "server/blobstore/service/app.py",
    "jsonrpc_bridge/cli.py",
}


def _file_of(frame: str) -> str:
    match = re.search(r"\(([^()]*)\)$", frame)
    return match.group(1) if match else frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C/Cython frames")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="folder for the raw (collapsed) stacks")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the server only (repeatable), to try a setting",
    )
    parser.add_argument(
        "--perf",
        action="store_true",
        help="sample with Linux perf instead: CPU per shared object (kernel, interpreter, "
        "gRPC core, OpenSSL...), which py-spy cannot attribute",
    )
    args = parser.parse_args()
    tool = "perf" if args.perf else args.py_spy
    if shutil.which(tool) is None and not Path(tool).exists():
        print(
            f"{tool} not found: pip install py-spy (or apt-get install linux-perf); "
            "or pass --py-spy PATH"
        )
        return 2

    split = CpuSplit.detect()
    pin_self(split.load)
    work = Path(tempfile.mkdtemp(prefix="blobstore-profile-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    server = start_blobstore_server(work, split.server, server_env)
    seconds = str(max(1, round(args.seconds)))
    if args.perf:
        raw = out / f"{args.workload}.perf.data"
        command = ["perf", "record", "-F", str(args.rate), "-g", "-p", str(server.pid)]
        command += ["-o", str(raw), "--", "sleep", seconds]
    else:
        raw = out / f"{args.workload}.raw.txt"
        command = [args.py_spy, "record", "--rate", str(args.rate), "--pid", str(server.pid)]
        # Native stacks need the process paused per sample; Python-only ones do not.
        command += ["--native"] if args.native else ["--nonblocking"]
        command += ["--gil"] if args.gil else []
        command += ["--format", "raw", "-o", str(raw), "--duration", seconds]
    try:
        result = asyncio.run(_profiled(args, server.address, server.pid, command))
    finally:
        server.stop()
        shutil.rmtree(work / "data", ignore_errors=True)
    print(result)
    if not raw.exists():
        print(f"the profiler wrote nothing to {raw}; see its message above")
        return 1
    print(summarise_perf(raw, args.top) if args.perf else summarise(raw, args.top))
    print(f"\ncollapsed stacks (flamegraph.pl / speedscope input): {raw}")
    return 0


async def _profiled(args: argparse.Namespace, target: str, pid: int, command: list[str]) -> str:
    samplers: list[subprocess.Popen[bytes]] = []

    def start_sampling() -> None:
        samplers.append(
            subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
            )
        )

    try:
        # One second more load than sampling, so the profile never sees an idle tail.
        return await drive(
            args.workload, target, pid, args.seconds + 1, args.concurrency, start_sampling
        )
    finally:
        for sampler in samplers:
            await asyncio.to_thread(sampler.wait)


def summarise_perf(data: Path, top: int) -> str:
    """CPU share per shared object, and the top symbols, from a perf.data file."""
    parts = []
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(data),
                "--stdio",
                "--no-children",
                "--sort",
                sort,
                "-g",
                "none",
                "--percent-limit",
                "0.5",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        rows = [r for r in report.stdout.splitlines() if r.strip() and not r.startswith("#")]
        parts.append(f"\n-- perf, by {sort}\n" + "\n".join(rows[:top]))
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
