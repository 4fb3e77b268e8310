#!/usr/bin/env python3
"""The cost of eviction per put, in-process: the storage chain without gRPC (issue 15).

    python scripts/bench/bench_evict.py [--trials 5] [--puts 4000] [--baseline-tree DIR]

Opens the chain the server opens (storage/factory.py: VerifyingBackend over the
EvictingBackend over the file system, group commit and all) in a child process, once
with `--max-bytes` and once without, fills each with the cap's worth of 1 KiB blobs
(untimed), then times `--puts` new 1 KiB puts from 16 concurrent callers: puts/s,
and the process's CPU time per put (every thread: the loop, the committer, the
pool's unlinks and syncs). The capped store evicts all along the timed puts.

Trials alternate capped and uncapped children (and, with --baseline-tree, this tree
and the other, so an A/B of two versions of the code sees the same noise), and the
script prints each figure's range over the trials and the capped/uncapped ratio
per trial: put_small_at_cap's ratio without the gRPC layers, which cost the same
on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIB = 1024
ROOT = Path(__file__).resolve().parents[2]


async def child(cap: int, fill: int, puts: int, concurrency: int) -> dict[str, float]:
    from blobstore.ids import blob_id_from_digest
    from blobstore.model import BlobType
    from blobstore.storage.factory import StorageSettings, open_storage

    folder = Path(tempfile.mkdtemp(prefix="blobstore-evict-"))
    storage = open_storage(StorageSettings(url=str(folder / "data"), max_bytes=cap))
    await storage.start()
    backend = storage.backend
    prefix = os.urandom(8)

    async def put_range(start: int, stop: int) -> None:
        for seed in range(start, stop):
            data = prefix + seed.to_bytes(8, "big") + bytes(KIB - 16)
            blob_id = blob_id_from_digest(hashlib.sha256(data).hexdigest())
            await backend.put(blob_id, BlobType.BINARY, data)

    async def callers(first: int, count: int) -> None:
        step = -(-count // concurrency)
        await asyncio.gather(
            *(
                put_range(first + i * step, first + min((i + 1) * step, count))
                for i in range(concurrency)
            )
        )

    try:
        await callers(0, fill)
        cpu, wall = time.process_time(), time.perf_counter()
        await callers(fill, puts)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await storage.stop()
        storage.close()
        await asyncio.to_thread(shutil.rmtree, folder, True)
    return {"puts_per_s": puts / wall, "cpu_us_per_put": cpu / puts * 1e6}


def spawn(tree: Path, cap: int, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "server")}
    argv = [sys.executable, "-P", __file__, "--child", str(cap), "--puts", str(args.puts)]
    argv += ["--fill", str(args.fill), "--concurrency", str(args.concurrency)]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--puts", type=int, default=4000)
    parser.add_argument(
        "--cap-kib", type=int, default=16384, help="the capped store's cap (bench.py's)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline-tree", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fill", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        figures = asyncio.run(child(args.child, args.fill, args.puts, args.concurrency))
        print(json.dumps(figures))
        return 0
    args.fill = args.cap_kib  # the cap's worth of 1 KiB blobs: the timed puts evict
    trees = {"this": ROOT}
    if args.baseline_tree:
        trees["base"] = args.baseline_tree.resolve()
    runs = [(name, cap) for name in trees for cap in (0, args.cap_kib * KIB)]
    seen: dict[tuple[str, int], list[dict[str, float]]] = {run: [] for run in runs}
    for trial in range(args.trials):
        order = runs if trial % 2 == 0 else runs[::-1]
        for name, cap in order:
            figures = spawn(trees[name], cap, args)
            seen[(name, cap)].append(figures)
            label = "capped" if cap else "uncapped"
            print(
                f"trial {trial} {name} {label}: {figures['puts_per_s']:.0f} puts/s, "
                f"{figures['cpu_us_per_put']:.0f} us CPU/put (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    for name in trees:
        free, capped = seen[(name, 0)], seen[(name, args.cap_kib * KIB)]
        ratios = sorted(
            c["puts_per_s"] / f["puts_per_s"] for c, f in zip(capped, free, strict=True)
        )
        cpu = sorted(
            c["cpu_us_per_put"] - f["cpu_us_per_put"] for c, f in zip(capped, free, strict=True)
        )
        print(
            f"{name}: capped/uncapped puts/s per trial {ratios[0]:.2f}-{ratios[-1]:.2f} "
            f"(median {ratios[len(ratios) // 2]:.2f}); extra CPU per put at the cap "
            f"{cpu[0]:.0f} to {cpu[-1]:.0f} us (median {cpu[len(cpu) // 2]:.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
