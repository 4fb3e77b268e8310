#!/usr/bin/env python3
"""Experiment (issue 17 point 3): a thread-pool grpc.server front against grpc.aio, with
the real handler.

    python scripts/bench/bench_front.py [--trials 3] [--seconds 2]

Serves Put and Get of the real BlobServicer, over the real BlobStore and file-system
backend (group commit, verified reads), two ways, each pinned to the server core:

    aio      our server as shipped (`blobstore serve`: grpc.aio, guard, auth, observer)
    hybrid   a thread-pool `grpc.server` (16 threads) whose handlers run the servicer's
             coroutine on one event-loop thread (asyncio.run_coroutine_threadsafe): the
             store, its group commit and its reads unchanged, the gRPC front swapped.
             No guard or other interceptor (they are grpc.aio interceptors): what it
             measures is the front alone, an upper bound for the hybrid.

and the two echo flavours (scripts/bench/bench_echo.py) as the ceilings, all
interleaved trial by trial with the benchmark's load generator (16 callers, 1 KiB JSON
documents for put_small, 1 KiB reads of a stored pool for get_small).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from bench_echo import server_options
from bench_load import KIB, Documents, GrpcCaller, closed_loop, get_request, random_picker
from bench_procs import (
    CpuSplit,
    pin_self,
    python_argv,
    start_blobstore_server,
    start_child,
    start_echo_server,
)

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.grpc.servicer import BlobServicer
from blobstore.proto_names import SERVICE_NAME
from blobstore.service.config import ServerConfig
from blobstore.service.malloc_tuning import tune_malloc
from blobstore.storage.factory import open_storage
from blobstore.store import BlobStore

HYBRID_READY = "hybrid gRPC listening on"


class _Context:
    """What the servicer's happy path asks of its context (nothing); errors are not timed."""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailers: Any = ()) -> None:
        raise RuntimeError(f"{code.name}: {details}")


def serve_hybrid(address: str, data_dir: Path, threads: int) -> None:
    tune_malloc()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="store-loop", daemon=True).start()
    config = ServerConfig(data_dir=data_dir)

    async def build() -> BlobServicer:
        storage = open_storage(config.storage_settings)
        return BlobServicer(BlobStore(storage.backend, config.limits))

    servicer = asyncio.run_coroutine_threadsafe(build(), loop).result()
    context = _Context()

    def unary(method: Any, request: Any, reply: Any) -> grpc.RpcMethodHandler[Any, Any]:
        def handle(message: Any, _: grpc.ServicerContext) -> Any:
            return asyncio.run_coroutine_threadsafe(method(message, context), loop).result()

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request.FromString,
            response_serializer=reply.SerializeToString,
        )

    handlers = {
        "Put": unary(servicer.Put, pb.PutRequest, pb.PutResponse),
        "Get": unary(servicer.Get, pb.GetRequest, pb.GetResponse),
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=server_options())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    port = server.add_insecure_port(address)
    server.start()
    print(f"{HYBRID_READY} 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


async def compare(targets: dict[str, tuple[str, int]], trials: int, seconds: float) -> None:
    docs = Documents()
    callers = {name: GrpcCaller(address) for name, (address, _) in targets.items()}
    for caller in callers.values():
        await caller.ready()
    pools: dict[str, list[bytes]] = {}
    for name, caller in callers.items():
        ids = []
        for n in range(500):
            reply = pb.PutResponse.FromString(await caller.call_put(docs.put_request(n)))
            ids.append(get_request(reply.id or "sha256:" + "0" * 64))
        pools[name] = ids
    seq = iter(range(10**6, 10**12))
    results: dict[tuple[str, str], list[float]] = {}
    for trial in range(trials):
        for workload in ("put_small", "get_small"):
            puts = workload == "put_small"
            for name in list(callers)[:: 1 if trial % 2 == 0 else -1]:
                caller, pick = callers[name], random_picker(pools[name])

                async def op(
                    n: int, caller: GrpcCaller = caller, pick: Any = pick, puts: bool = puts
                ) -> bytes:
                    if puts:
                        return await caller.call_put(docs.put_request(n))
                    return await caller.call_get(pick())

                found = await closed_loop(
                    op,
                    concurrency=16,
                    seconds=seconds,
                    payload=KIB,
                    server_pids=[targets[name][1]],
                    sequence=seq,
                )
                results.setdefault((workload, name), []).append(found.ops_per_s)
                print(
                    f"trial {trial + 1} {workload:<10} {name:<12} {found.ops_per_s:8.1f} ops/s"
                    f"  server cpu {found.server_cpu or 0:.2f}",
                    flush=True,
                )
    for caller in callers.values():
        await caller.close()
    print("\nmedians (ops/s) and ratios")
    for workload in ("put_small", "get_small"):
        median = {name: statistics.median(results[(workload, name)]) for name in callers}
        line = "  ".join(f"{name} {value:.0f}" for name, value in median.items())
        print(f"{workload}: {line}; hybrid/aio {median['hybrid'] / median['aio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--serve-hybrid", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    if args.serve_hybrid is not None:
        serve_hybrid("127.0.0.1:0", args.serve_hybrid, args.threads)
        return
    import re
    import tempfile

    split = CpuSplit.detect()
    pin_self(split.load)
    work = Path(tempfile.mkdtemp(prefix="bench-front-", dir=args.work_dir))
    children = []
    try:
        aio = start_blobstore_server(work, split.server, None)
        children.append(aio)
        hybrid = start_child(
            "hybrid",
            python_argv(__file__, "--serve-hybrid", str(work / "hybrid-data")),
            cpus=split.server,
            log_path=work / "hybrid.log",
            ready=re.compile(rf"{HYBRID_READY} (\S+:\d+)"),
        )
        children.append(hybrid)
        echo = start_echo_server(work / "echo.log", split.server)
        children.append(echo)
        sync = start_echo_server(work / "sync.log", split.server, "--style", "sync", name="sync")
        children.append(sync)
        targets = {
            "aio": (aio.address, aio.pid),
            "hybrid": (hybrid.address, hybrid.pid),
            "echo_aio": (echo.address, echo.pid),
            "echo_sync": (sync.address, sync.pid),
        }
        asyncio.run(compare(targets, args.trials, args.seconds))
    finally:
        for child in children:
            child.stop()


if __name__ == "__main__":
    main()
