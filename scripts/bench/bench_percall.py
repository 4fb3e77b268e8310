#!/usr/bin/env python3
"""Server CPU per unary call, ours against the echo ceiling, in one interleaved run.

    python scripts/bench/bench_percall.py [--trials 5] [--seconds 2] [--baseline DIR ...]

Starts the echo server (scripts/bench/bench_echo.py) and our server pinned like
bench.py does, stores 1000 documents, then runs, trial after trial and in
a shuffled order, echo Get, get_small, echo Put, put_dedup (JSON text put again)
and put_dedup_binary (1 KiB Binary put again: the stored copy is compared) (16 callers,
the load generator of bench.py) and prints per workload the median ops/s and the
median server CPU per call in microseconds (from /proc schedstat), with the
range over the trials. CPU per call moves less with other work on the
machine than ops/s does, so it is the figure to compare changes by.

`--baseline DIR` (repeatable) adds a server of ours run from another source
tree (e.g. `git archive HEAD | tar -x -C DIR`; see
bench_procs.start_baseline_server), interleaved with the rest: before/after
figures from the same minutes. `--variant NAME[@DIR]:VAR=VALUE,...` (repeatable)
adds a server (this tree's, or DIR's) with environment settings, e.g.
`--variant metrics:BLOBSTORE_METRICS_PORT=0`: what a feature costs per call.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench_load import KIB, Documents, GrpcCaller, closed_loop, get_request, random_picker
from bench_procs import (
    Child,
    CpuSplit,
    pin_self,
    start_baseline_server,
    start_blobstore_server,
    start_echo_server,
)
from bench_stats import Trial

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb

POOL = 1000
ECHO_OF = {"get_small": "echo_get", "put_dedup": "echo_put", "put_dedup_binary": "echo_put"}
"""Each workload of ours and the echo workload its ratio is taken to."""


async def workloads(
    servers: dict[str, Child],
) -> dict[str, tuple[Callable[[int], Awaitable[object]], int]]:
    """name -> (op, server pid), in the order the trials run them."""
    docs = Documents()
    callers = {name: GrpcCaller(child.address) for name, child in servers.items()}
    for caller in callers.values():
        await caller.ready()
    ops: dict[str, tuple[Callable[[int], Awaitable[object]], int]] = {}
    echo = callers.pop("echo")
    echo_get = get_request("sha256:" + "0" * 64)
    ops["echo_get"] = (lambda n: echo.call_get(echo_get), servers["echo"].pid)
    puts = [docs.put_request(n) for n in range(POOL)]
    for name, caller in callers.items():
        gets = []
        for request in puts:
            reply = pb.PutResponse.FromString(await caller.call_put(request))
            gets.append(get_request(reply.id))
        pick = random_picker(gets)
        ops[f"get_small[{name}]"] = (
            lambda n, c=caller, p=pick: c.call_get(p()),  # type: ignore[misc]
            servers[name].pid,
        )
    ops["echo_put"] = (lambda n: echo.call_put(docs.put_request(n)), servers["echo"].pid)
    for name, caller in callers.items():
        pick = random_picker(puts)
        ops[f"put_dedup[{name}]"] = (
            lambda n, c=caller, p=pick: c.call_put(p()),  # type: ignore[misc]
            servers[name].pid,
        )
    binary = [
        pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, data=docs.text(n)).SerializeToString()
        for n in range(POOL)
    ]
    for name, caller in callers.items():
        for request in binary:
            await caller.call_put(request)
        pick = random_picker(binary)
        ops[f"put_dedup_binary[{name}]"] = (
            lambda n, c=caller, p=pick: c.call_put(p()),  # type: ignore[misc]
            servers[name].pid,
        )
    return ops


async def run(
    servers: dict[str, Child], trials: int, seconds: float, kinds: list[str]
) -> dict[str, list[Trial]]:
    ops = await workloads(servers)
    if kinds:  # only these workloads, with the echo figures they are divided by
        wanted = {*kinds, *(ECHO_OF[kind] for kind in kinds)}
        ops = {name: op for name, op in ops.items() if name.split("[")[0] in wanted}
    results: dict[str, list[Trial]] = {name: [] for name in ops}
    for op, pid in ops.values():  # warm-up
        await closed_loop(op, concurrency=16, seconds=0.5, payload=KIB, server_pids=[pid])
    for trial in range(trials):
        print(f"trial {trial + 1}/{trials}", file=sys.stderr, flush=True)
        order = list(ops)
        random.Random(trial).shuffle(order)  # no server always runs right after another
        for name in order:
            op, pid = ops[name]
            results[name].append(
                await closed_loop(
                    op, concurrency=16, seconds=seconds, payload=KIB, server_pids=[pid]
                )
            )
    return results


def us_per_call(trial: Trial) -> float:
    return (trial.server_cpu or 0.0) * trial.seconds / trial.ops * 1e6


def report(results: dict[str, list[Trial]]) -> str:
    lines = [f"{'workload':24} {'ops/s med (min-max)':>24} {'server us/call med (min-max)':>30}"]
    for name, trials in results.items():
        rates = [t.ops_per_s for t in trials]
        cpu = [us_per_call(t) for t in trials]
        lines.append(
            f"{name:24} {statistics.median(rates):8.0f} ({min(rates):5.0f}-{max(rates):5.0f})"
            f"   {statistics.median(cpu):10.0f} ({min(cpu):4.0f}-{max(cpu):4.0f})"
        )
    lines.append("ratios to echo per trial (ops/s), median (min-max):")
    for name, trials in results.items():
        echo = ECHO_OF.get(name.split("[")[0])
        if echo is None:
            continue
        ratios = [t.ops_per_s / e.ops_per_s for t, e in zip(trials, results[echo], strict=True)]
        lines.append(
            f"  {name:22} {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return "\n".join(lines)


def parse_variant(spec: str) -> tuple[str, Path | None, dict[str, str]]:
    """`NAME[@DIR]:VAR=VALUE,...` -> (name, source tree or None, environment)."""
    head, _, settings = spec.partition(":")
    name, _, tree = head.partition("@")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, Path(tree) if tree else None, env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="a copy of the code to compare against (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[@DIR]:VAR=VALUE,...",
        help="a server configured by environment variables (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=sorted(ECHO_OF),
        help="run only this workload (repeatable; its echo runs too)",
    )
    args = parser.parse_args()
    split = CpuSplit.detect()
    pin_self(split.load)
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="blobstore-percall-") as tmp:
        work = Path(tmp)
        try:
            echo = start_echo_server(work / "echo.log", split.server)
            children.append(echo)
            servers = {"echo": echo}
            (work / "ours").mkdir()
            servers["ours"] = start_blobstore_server(work / "ours", split.server, None)
            children.append(servers["ours"])
            for i, code in enumerate(args.baseline):
                name = f"base{i}" if len(args.baseline) > 1 else "base"
                servers[name] = start_baseline_server(code.resolve(), work / name, split.server)
                children.append(servers[name])
            for spec in args.variant:
                name, tree, env = parse_variant(spec)
                (work / name).mkdir()
                servers[name] = (
                    start_baseline_server(tree.resolve(), work / name, split.server, env)
                    if tree is not None
                    else start_blobstore_server(work / name, split.server, env)
                )
                children.append(servers[name])
            results = asyncio.run(run(servers, args.trials, args.seconds, args.only))
        finally:
            for child in children:
                child.stop()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
