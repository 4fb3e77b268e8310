#!/usr/bin/env python3
"""Benchmark: the service against the machine's own ceilings, in one run (issue 5).

    python scripts/bench.py            # full run, a few minutes
    python scripts/bench.py --quick    # tiny sizes: shows the benchmark works, no more

Measures, interleaving trials so that noise on a shared machine hits the
service and its ceilings alike:

- ceilings: bare echo BlobServices (scripts/bench/bench_echo.py), one grpc.aio
  served like ours and one thread-pool grpc.server (small-call ratios are to the
  faster), for unary Put (1 KiB in, 32 B out), Get (1 KiB out), BatchPut/BatchGet of
  BATCH blobs, and a streamed GetStream of the large size; the disk (write + fsync +
  rename of 1 KiB files by 16 threads; sequential write + fsync of the
  large size); SHA-256 speed;
- our service over gRPC: put_small, get_small, put_dedup (16 callers), batch_put
  and batch_get (BATCH blobs a call; rows count blobs), put_large and get_large
  (binary, streamed, each rep a new blob);
- peers under the same load on the same core (bench_peers.py; not with --quick or
  --no-peers): BuildGrid's CAS and ByteStream, Stepflow's stepflow-server
  BlobService over its filesystem and sqlite stores, with issue 17's targets;
- stepflow.v1 on the same port: stepflow_put (PutBlob of the same 1 KiB
  documents as json_data, as Stepflow workers send them) and stepflow_get
  (GetBlob, JSON back as a protobuf Value), as ratios to put_small/get_small;
- TLS + a bearer token (issue 14): tls_put_small and tls_get_small against a
  server with a self-signed certificate and a tokens file (scripts/bench/bench_tls.py),
  as ratios to put_small/get_small;
- the JSON-RPC bridge over HTTP: blobs/put and blobs/get (16 callers); a
  bridge that does not start fails the run;
- put_small_at_cap: put_small on a third server started with --max-bytes and
  filled to its cap first, so that its puts run while it evicts, as a ratio to
  put_small (target >= 0.80);
- the server's peak RSS growth during a 1 GiB streamed put and get;
- an A/A control: control_put_small and control_get_small on a second plain server,
  configured like the first, as ratios to put_small/get_small (~1.00 if the method
  is fair; its spread is the run's noise).

Rows that are our server another way (stepflow_*, metrics_*, tracing_*, tls_*,
put_small_at_cap, bridge_*, control_*: PAIRED) are not divided by the put_small or
get_small row: each of their trials runs beside a trial of put_small/get_small of
its own, in ABBA order; the ratio is the median, over consecutive couples of trials
(one with the reference first, one with it second), of each couple's geometric mean
(`balanced_ratio`). Use an even --trials: an odd last trial is left out.

`--startup-blobs N` instead times a start-up on a folder of N blobs (the usage
index rebuild; bench_startup.py).

Server side and load generator are separate processes pinned to separate
cores (bench_procs.CpuSplit); the server runs as shipped (durable puts,
verified reads), with no BLOBSTORE_* variables. It prints a table of every
figure and its ratio to its ceiling, target and PASS/MISS, and writes JSON
(--json, default bench-results.json).

`--baseline-tree PATH` adds our server as another source tree has it (for
example a `git worktree` of an older commit), interleaved with ours, and
prints ours/baseline for put_small, get_small, put_large and get_large.

Why one script of ~1300 lines: every row is measured in the same interleaved trial
loop against its ceiling; the servers, ceilings and CPU split it drives live in the
bench_* modules beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import bench_disk
import bench_peers
import grpc
import psutil
from bench_load import (
    KIB,
    MIB,
    Documents,
    GrpcCaller,
    HttpCaller,
    LargeBlobs,
    LoadError,
    Op,
    batch_get_request,
    bridge_get_body,
    closed_loop,
    endless_blob,
    get_blob_request,
    get_request,
    one_shot,
    random_picker,
)
from bench_procs import (
    Child,
    CpuSplit,
    PeakRss,
    StartError,
    pin_self,
    python_argv,
    start_baseline_server,
    start_blobstore_server,
    start_child,
    start_echo_server,
)
from bench_stats import Summary, Trial
from bench_tls import Secured, start_secured_server
from google.protobuf import json_format

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.stepflow.v1 import blobs_pb2 as stepflow_pb
from blobstore.canonical_json import canonicalize_text
from blobstore.client import AsyncBlobClient
from blobstore.errors import BlobStoreError


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of one run."""

    quick: bool
    trials: int
    seconds: float
    warmup: float
    concurrency: int
    pool: int
    large_bytes: int
    reps: int
    rss_bytes: int
    disk_threads: int
    bridge_cpu: str
    server_env: tuple[str, ...]
    """NAME=VALUE settings for every server-side process (echo, ours, bridge); none as shipped."""
    only: tuple[str, ...] = ()
    """Small-call rows to run alone (with the rows they are paired with); () = all."""

    @staticmethod
    def from_args(args: argparse.Namespace) -> Settings:
        quick = bool(args.quick)

        def pick(given: Any, full: Any, small: Any) -> Any:
            return given if given is not None else (small if quick else full)

        return Settings(
            quick=quick,
            trials=pick(args.trials, 6, 1),  # even: paired rows take trials in couples
            seconds=pick(args.seconds, 2.0, 0.25),
            warmup=pick(None, 0.5, 0.1),
            concurrency=args.concurrency,
            pool=pick(args.pool, 1000, 128),  # at least BATCH: batch_get reads that many
            large_bytes=pick(args.large_mib, 64, 2) * MIB,
            reps=pick(args.reps, 5, 3),
            rss_bytes=pick(args.rss_mib, 1024, 8) * MIB,
            disk_threads=16,
            bridge_cpu=args.bridge_cpu,
            server_env=tuple(args.server_env),
            only=tuple(args.only),
        )


# -- targets (issue 5, point 2) ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    workload: str
    metric: str  # "ops_per_s" or "mb_per_s"
    ceilings: tuple[str, ...]  # the slowest of these is the ceiling (the fastest if `fastest`)
    minimum: float
    fastest: bool = False


# Small calls are held to the faster of the two echo flavours (issue 17): the grpc.aio
# one, served like ours, and the thread-pool grpc.server one.
ECHO_PUT = ("echo_put", "echo_put_sync")
ECHO_GET = ("echo_get", "echo_get_sync")
BATCH = 100
"""Blobs per call in the batch rows (batch_put, batch_get and their echoes and peers)."""

TARGETS = [
    Target("put_small", "ops_per_s", ECHO_PUT, 0.70, fastest=True),
    Target("get_small", "ops_per_s", ECHO_GET, 0.85, fastest=True),
    Target("put_dedup", "ops_per_s", ECHO_PUT, 0.85, fastest=True),
    # No target of their own against the echo (issue 17 sets one against BuildGrid): the
    # ratio is printed for information.
    Target("batch_put", "ops_per_s", ("echo_batch_put", "echo_batch_put_sync"), 0.0, True),
    Target("batch_get", "ops_per_s", ("echo_batch_get", "echo_batch_get_sync"), 0.0, True),
    Target("put_large", "mb_per_s", ("disk_seq_write",), 0.80),
    Target("get_large", "mb_per_s", ("sha256", "echo_get_stream"), 0.80),
    Target("bridge_put", "ops_per_s", ("put_small",), 0.50),
    Target("bridge_get", "ops_per_s", ("get_small",), 0.50),
    # stepflow.v1 over the same store: the second API should cost nothing extra.
    Target("stepflow_put", "ops_per_s", ("put_small",), 0.90),
    Target("stepflow_get", "ops_per_s", ("get_small",), 0.90),
    # A second server with --metrics-port (issue 16): metrics should cost under 5 %.
    Target("metrics_put_small", "ops_per_s", ("put_small",), 0.95),
    Target("metrics_get_small", "ops_per_s", ("get_small",), 0.95),
    # A third server with tracing on (--otlp-endpoint, a span per call exported to a
    # sink): under 15 %.
    Target("tracing_put_small", "ops_per_s", ("put_small",), 0.85),
    Target("tracing_get_small", "ops_per_s", ("get_small",), 0.85),
    # A third server with TLS and a bearer token (issue 14): the same small calls.
    Target("tls_put_small", "ops_per_s", ("put_small",), 0.80),
    Target("tls_get_small", "ops_per_s", ("get_small",), 0.80),
    # A third server with --max-bytes, filled to its cap first (issue 15): every put evicts.
    Target("put_small_at_cap", "ops_per_s", ("put_small",), 0.80),
    # The A/A control: a second plain server, configured like the first. Its paired ratio
    # should be ~1.00; how far it strays shows how fair and how noisy the run was.
    Target("control_put_small", "ops_per_s", ("put_small",), 0.0),
    Target("control_get_small", "ops_per_s", ("get_small",), 0.0),
]
# Rows that are our server another way (another API, a feature on, another server
# configured so), divided by the plain server's put_small or get_small. Each trial of
# such a row runs right beside a trial of its reference made for it alone, their order
# alternating (ABBA), and its ratio is the median of those per-trial pairs: a reference
# trial minutes away, or right after the batch_put burst (whose file writeback lands on
# the next trials), skewed these rows by 10-20 % (docs/performance.md).
PAIRED = {
    t.workload: t.ceilings[0] for t in TARGETS if t.ceilings in (("put_small",), ("get_small",))
}
SMALL_WORKLOADS = [
    "put_small",
    "batch_put",
    "batch_get",
    "get_small",
    "put_dedup",
    "stepflow_put",
    "stepflow_get",
    "metrics_put_small",
    "metrics_get_small",
    "tracing_put_small",
    "tracing_get_small",
    "tls_put_small",
    "tls_get_small",
    "put_small_at_cap",
    "bridge_put",
    "bridge_get",
    "control_put_small",
    "control_get_small",
]
MAX_TAIL_RATIO = 4.0
MAX_RSS_GROWTH = 100 * MIB


# -- the run -----------------------------------------------------------------------------


class Bench:
    """Runs every workload against already started processes and collects trials."""

    def __init__(
        self,
        settings: Settings,
        work: Path,
        echo: Child,
        server: Child,
        bridge: Child | None,
        baseline: Child | None = None,
        metered: Child | None = None,
        echo_sync: Child | None = None,
        peers: bench_peers.Peers | None = None,
        traced: Child | None = None,
        secured: tuple[Child, Secured] | None = None,
        capped: Child | None = None,
        control: Child | None = None,
    ) -> None:
        self.s = settings
        self.control = control
        self.echo_sync = echo_sync
        self.peers = peers
        self.metered = metered
        self.traced = traced
        self.secured = secured
        self.capped = capped
        self.work = work
        self.echo = echo
        self.server = server
        self.bridge = bridge
        self.baseline = baseline
        self.trials: dict[str, list[Trial]] = {}
        # PAIRED row -> the trials of its reference run beside its own, trial i with trial i.
        self.references: dict[str, list[Trial]] = {}
        self.rss: dict[str, dict[str, float]] = {}
        self.docs = Documents()
        self.pool_ids: list[str] = []
        self.base_batches = False  # the baseline tree serves BatchPut (set by _preflight)
        self._seq = iter(range(10**12))

    def add(self, name: str, trial: Trial) -> None:
        self.trials.setdefault(name, []).append(trial)

    async def run(self) -> None:
        self.echo_c = GrpcCaller(self.echo.address)
        self.sync_c = GrpcCaller(self.echo_sync.address) if self.echo_sync else None
        self.ours_c = GrpcCaller(self.server.address)
        self.base_c = GrpcCaller(self.baseline.address) if self.baseline else None
        self.metered_c = GrpcCaller(self.metered.address) if self.metered else None
        self.capped_c = GrpcCaller(self.capped.address) if self.capped else None
        self.control_c = GrpcCaller(self.control.address) if self.control else None
        self.traced_c = GrpcCaller(self.traced.address) if self.traced else None
        self.secured_c = (
            GrpcCaller(
                self.secured[0].address, self.secured[1].credentials(), self.secured[1].metadata
            )
            if self.secured
            else None
        )
        extra = (
            self.base_c,
            self.metered_c,
            self.traced_c,
            self.secured_c,
            self.capped_c,
            self.sync_c,
            self.control_c,
        )
        for caller in (self.echo_c, self.ours_c, *extra):
            if caller is not None:
                await caller.ready()
        if self.peers is not None:
            await self.peers.ready()
        self.http: HttpCaller | None = None
        if self.bridge is not None:
            self.http = HttpCaller(f"http://{self.bridge.address}/", self.s.concurrency)
        try:
            await self._preflight()
            await self._fill_pool()
            await self._fill_capped()
            if self.peers is not None:
                say("storing the read pool in the peers")
                await self.peers.fill(self.docs, len(self.pool_ids), self.s.concurrency)
            small = self._small_workloads()
            if self.peers is not None:
                small.update(self.peers.small_workloads(self.docs, BATCH))
            if self.s.only:  # these rows and their references, nothing else
                wanted = {*self.s.only, *(PAIRED[n] for n in self.s.only if n in PAIRED)}
                small = {name: row for name, row in small.items() if name in wanted}
            say(f"warming up ({len(small)} workloads x {self.s.warmup:.1f} s)")
            for op, _payload, pids in small.values():
                await self._loop(op, 1, self.s.warmup, pids)
            for trial in range(self.s.trials):
                say(f"small-call trial {trial + 1}/{self.s.trials}")
                for name, variant in trial_order(list(small), trial):
                    op, payload, pids = small[name]
                    items = BATCH if "batch" in name else 1
                    result = await self._loop(op, payload, self.s.seconds, pids, items)
                    if variant is None:
                        self.add(name, result)
                    else:
                        self.references.setdefault(variant, []).append(result)
            # Not interleaved with the calls above: a burst of thousands of new files
            # leaves ext4 slower at creating the next ones for a while (without a
            # journal it scans inode tables for recently freed inodes), which cut
            # the following put_small trial by 30-45 %. No target uses these rows.
            if self.s.only:
                return
            bench_disk.prepare_small_files(self.work / "disk")
            for trial in range(self.s.trials):
                for name, dirsync in (
                    ("disk_small_files", False),
                    ("disk_small_files_dirsync", True),
                ):
                    self.add(name, self._disk_small(trial, dirsync))
            await self._large()
            await self._rss()
        finally:
            await self.echo_c.close()
            await self.ours_c.close()
            if self.peers is not None:
                await self.peers.close()
            for other in (
                self.base_c,
                self.metered_c,
                self.traced_c,
                self.secured_c,
                self.capped_c,
                self.sync_c,
                self.control_c,
            ):
                if other is not None:
                    await other.close()
            if self.http is not None:
                await self.http.close()

    async def _loop(
        self, op: Op, payload: int, seconds: float, pids: list[int], items: int = 1
    ) -> Trial:
        return await closed_loop(
            op,
            concurrency=self.s.concurrency,
            seconds=seconds,
            payload=payload,
            server_pids=pids,
            sequence=self._seq,
            items=items,
        )

    def _small_workloads(self) -> dict[str, tuple[Op, int, list[int]]]:
        docs = self.docs
        gets = [get_request(i) for i in self.pool_ids]
        pick_get = random_picker(gets)
        pick_get_blob = random_picker([get_blob_request(i) for i in self.pool_ids])
        dedup = [docs.put_request(n) for n in range(len(self.pool_ids))]
        pick_dedup = random_picker(dedup)
        pick_id = random_picker([i.encode() for i in self.pool_ids])
        echo_get = get_request("sha256:" + "0" * 64)
        ours, echo = [self.server.pid], [self.echo.pid]
        rng = random.Random(7)
        batches = [batch_get_request(rng.sample(self.pool_ids, BATCH)) for _ in range(64)]
        pick_batch = random_picker(batches)
        workloads: dict[str, tuple[Op, int, list[int]]] = {
            "echo_put": (lambda n: self.echo_c.call_put(docs.put_request(n)), KIB, echo),
            "put_small": (lambda n: self.ours_c.call_put(docs.put_request(n)), KIB, ours),
            "put_dedup": (lambda n: self.ours_c.call_put(pick_dedup()), KIB, ours),
            "echo_get": (lambda n: self.echo_c.call_get(echo_get), KIB, echo),
            "get_small": (lambda n: self.ours_c.call_get(pick_get()), KIB, ours),
            "stepflow_put": (
                lambda n: self.ours_c.call_put_blob(docs.put_blob_request(n)),
                KIB,
                ours,
            ),
            "stepflow_get": (lambda n: self.ours_c.call_get_blob(pick_get_blob()), KIB, ours),
            "echo_batch_put": (
                lambda n: self.echo_c.call_batch_put(docs.batch_put_request(n, BATCH)),
                KIB,
                echo,
            ),
            "batch_put": (
                lambda n: self.ours_c.call_batch_put(docs.batch_put_request(n, BATCH)),
                KIB,
                ours,
            ),
            "echo_batch_get": (lambda n: self.echo_c.call_batch_get(pick_batch()), KIB, echo),
            "batch_get": (lambda n: self.ours_c.call_batch_get(pick_batch()), KIB, ours),
        }
        if self.sync_c is not None and self.echo_sync is not None:
            sync_c, sync = self.sync_c, [self.echo_sync.pid]
            workloads["echo_put_sync"] = (lambda n: sync_c.call_put(docs.put_request(n)), KIB, sync)
            workloads["echo_get_sync"] = (lambda n: sync_c.call_get(echo_get), KIB, sync)
            workloads["echo_batch_put_sync"] = (
                lambda n: sync_c.call_batch_put(docs.batch_put_request(n, BATCH)),
                KIB,
                sync,
            )
            workloads["echo_batch_get_sync"] = (
                lambda n: sync_c.call_batch_get(pick_batch()),
                KIB,
                sync,
            )
        if self.base_c is not None and self.baseline is not None:
            base_c, base = self.base_c, [self.baseline.pid]
            workloads["base_put_small"] = (
                lambda n: base_c.call_put(docs.put_request(n)),
                KIB,
                base,
            )
            workloads["base_get_small"] = (lambda n: base_c.call_get(pick_get()), KIB, base)
            if self.base_batches:  # a baseline tree older than BatchPut has no such row
                workloads["base_batch_put"] = (
                    lambda n: base_c.call_batch_put(docs.batch_put_request(n, BATCH)),
                    KIB,
                    base,
                )
        # Our server configured another way: the same 1 KiB puts and gets, paired rows.
        variants: list[tuple[str | None, str | None, GrpcCaller | None, Child | None]] = [
            ("metrics_put_small", "metrics_get_small", self.metered_c, self.metered),
            ("tracing_put_small", "tracing_get_small", self.traced_c, self.traced),
            (
                "tls_put_small",
                "tls_get_small",
                self.secured_c,
                self.secured[0] if self.secured else None,
            ),
            ("put_small_at_cap", None, self.capped_c, self.capped),
            ("control_put_small", "control_get_small", self.control_c, self.control),
        ]
        for put_name, get_name, caller, child in variants:
            if caller is None or child is None:
                continue
            workloads.update(_put_get_rows(caller, [child.pid], put_name, get_name, docs, pick_get))
        if self.http is not None and self.bridge is not None:
            http = self.http
            both = [self.server.pid, self.bridge.pid]
            workloads["bridge_put"] = (lambda n: http.call(docs.bridge_put_body(n)), KIB, both)
            workloads["bridge_get"] = (
                lambda n: http.call(bridge_get_body(n, pick_id().decode())),
                KIB,
                both,
            )
        return workloads

    def _disk_small(self, trial: int, dirsync: bool) -> Trial:
        return bench_disk.small_files(
            self.work / "disk",
            threads=self.s.disk_threads,
            seconds=self.s.seconds,
            size=KIB,
            fsync_dir=dirsync,
            tag=f"t{trial}{'d' if dirsync else ''}",
        )

    async def _preflight(self) -> None:
        """Checks, untimed, that the service answers what the timed loops assume."""
        text = self.docs.text(next(self._seq))
        canonical = canonicalize_text(text)
        if len(canonical) != self.docs.size:
            raise LoadError(f"test document is {len(canonical)} bytes canonical, not {KIB}")
        expected = "sha256:" + hashlib.sha256(canonical).hexdigest()
        async with AsyncBlobClient(self.server.address, timeout=30) as client:
            put = await client.put_json_text(text)
            got = await client.get(expected)
        if put.info.blob_id != expected or got.data != canonical:
            raise LoadError(
                f"service stored the test document as {put.info.blob_id}, not {expected}"
            )
        await self._preflight_stepflow()
        self.base_batches = False
        if self.base_c is not None:
            try:
                await self.base_c.call_batch_put(b"")
                self.base_batches = True
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
        if self.http is not None:
            await self._preflight_bridge()

    async def _preflight_stepflow(self) -> None:
        """stepflow.v1 stores the document under the same id and returns the same value."""
        seq = next(self._seq)
        text = self.docs.text(seq)
        expected = hashlib.sha256(canonicalize_text(text)).hexdigest()
        put = stepflow_pb.PutBlobResponse.FromString(
            await self.ours_c.call_put_blob(self.docs.put_blob_request(seq))
        )
        got = stepflow_pb.GetBlobResponse.FromString(
            await self.ours_c.call_get_blob(get_blob_request(expected))
        )
        if put.blob_id != expected or got.blob_type != "data":
            raise LoadError(
                f"stepflow.v1 stored the test document as {put.blob_id}, not {expected}"
            )
        if json_format.MessageToDict(got.json_data) != json.loads(text):
            raise LoadError("stepflow.v1 GetBlob returned other data than was put")

    async def _preflight_bridge(self) -> None:
        http = self.http
        assert http is not None
        seq = next(self._seq)
        expected = "sha256:" + hashlib.sha256(canonicalize_text(self.docs.text(seq))).hexdigest()
        result = await _retry(lambda: http.call(self.docs.bridge_put_body(seq)))
        if result.get("blob_id") != expected:
            raise LoadError(f"bridge put gave {result!r}, gRPC id is {expected}")
        got = await http.call(bridge_get_body(seq, expected))
        if got.get("data") != json.loads(self.docs.text(seq)):
            raise LoadError("bridge get returned other data than was put")

    async def _fill_capped(self) -> None:
        """Fills the capped server past its high-water mark, so that its timed puts evict."""
        caller = self.capped_c
        if caller is None:
            return
        count = capped_bytes(self.s) // KIB
        say(f"filling the capped server with {count} documents (its cap)")
        todo = iter(range(count))

        async def worker() -> None:
            for _ in todo:
                await caller.call_put(self.docs.put_request(next(self._seq)))

        await asyncio.gather(*(worker() for _ in range(self.s.concurrency)))

    async def _fill_pool(self) -> None:
        """Stores the documents that get_small, put_dedup and bridge_get read back."""
        say(f"storing {self.s.pool} documents for the read workloads")
        ids: list[str] = [""] * self.s.pool
        todo = iter(range(self.s.pool))

        async def worker() -> None:
            for n in todo:
                request = self.docs.put_request(n)
                reply = await self.ours_c.call_put(request)
                ids[n] = pb.PutResponse.FromString(reply).id
                # The same documents and ids on every other server.
                others = (
                    self.base_c,
                    self.metered_c,
                    self.traced_c,
                    self.secured_c,
                    self.control_c,
                )
                for other in others:
                    if other is not None:
                        await other.call_put(request)

        await asyncio.gather(*(worker() for _ in range(self.s.concurrency)))
        self.pool_ids = ids

    async def _large(self) -> None:
        size = self.s.large_bytes
        say(f"large blobs: {self.s.reps} reps of {size // MIB} MiB")
        blobs = LargeBlobs(size)
        sha_data = os.urandom(size)
        ours, echo = [self.server.pid], [self.echo.pid]
        echo_get = pb.GetStreamRequest(id=str(size)).SerializeToString()
        for rep in range(self.s.reps):
            unique = f"{self.docs.nonce}-large-{rep}".encode()
            messages = blobs.messages(unique)
            self.add(
                "echo_get_stream",
                await one_shot(self._streamed_get(self.echo_c, echo_get), size, echo),
            )
            self.add(
                "echo_put_stream",
                await one_shot(self._streamed_put(self.echo_c, messages, []), size, echo),
            )
            ids: list[str] = []
            servers = [("", self.ours_c, ours, ids)]
            if self.base_c is not None and self.baseline is not None:
                servers.append(("base_", self.base_c, [self.baseline.pid], []))
            for prefix, caller, pids, stored in servers[:: -1 if rep % 2 else 1]:
                self.add(
                    f"{prefix}put_large",
                    await one_shot(self._streamed_put(caller, messages, stored), size, pids),
                )
                request = pb.GetStreamRequest(id=stored[0]).SerializeToString()
                self.add(
                    f"{prefix}get_large",
                    await one_shot(self._streamed_get(caller, request), size, pids),
                )
            stored_ids = [stored for *_, stored in servers]
            if any(stored != ids for stored in stored_ids):
                raise LoadError(f"the servers stored the large blob as {stored_ids}")
            if self.peers is not None and self.peers.buildgrid is not None:
                await self._buildgrid_large(blobs.content(unique + b"-bg"), size)
            self.add("disk_seq_write", bench_disk.sequential_write(self.work, size=size))
            self.add("sha256", bench_disk.sha256_speed(sha_data))
            if rep == 0:
                await self._check_large(ids[0], blobs.content(unique))

    async def _buildgrid_large(self, data: bytes, size: int) -> None:
        peers = self.peers
        assert peers is not None and peers.buildgrid is not None
        messages = bench_peers.write_requests(data)
        pids = [peers.buildgrid.pid]
        self.add("bg_put_large", await one_shot(lambda: peers.put_large(messages), size, pids))
        self.add("bg_get_large", await one_shot(lambda: peers.get_large(data), size, pids))

    @staticmethod
    def _streamed_put(
        caller: GrpcCaller, messages: list[bytes], ids: list[str]
    ) -> Callable[[], Awaitable[None]]:
        async def put() -> None:
            reply = await caller.stream_put(messages)
            ids.append(pb.PutResponse.FromString(reply).id)

        return put

    @staticmethod
    def _streamed_get(caller: GrpcCaller, request: bytes) -> Callable[[], Awaitable[int]]:
        return lambda: caller.stream_get(request)

    async def _check_large(self, blob_id: str, content: bytes) -> None:
        expected = "sha256:" + hashlib.sha256(content).hexdigest()
        if blob_id != expected:
            raise LoadError(f"large put stored {blob_id}, content hashes to {expected}")
        async with AsyncBlobClient(self.server.address, timeout=120) as client:
            got = await client.get(blob_id)
        if got.data != content:
            raise LoadError("large get returned other data than was put")

    async def _rss(self) -> None:
        size = self.s.rss_bytes
        say(f"server RSS during a {size // MIB} MiB streamed put and get")
        unique = f"{self.docs.nonce}-rss".encode()
        with PeakRss(self.server.pid) as put_rss:
            start = time.perf_counter()
            reply = await self.ours_c.stream_put(endless_blob(size, unique))
            put_seconds = time.perf_counter() - start
        blob_id = pb.PutResponse.FromString(reply).id
        request = pb.GetStreamRequest(id=blob_id).SerializeToString()
        with PeakRss(self.server.pid) as get_rss:
            start = time.perf_counter()
            received = await self.ours_c.stream_get(request)
            get_seconds = time.perf_counter() - start
        if received < size:
            raise LoadError(f"streamed get of the RSS blob returned {received} of {size} bytes")
        for name, meter, seconds in (
            ("rss_put_stream", put_rss, put_seconds),
            ("rss_get_stream", get_rss, get_seconds),
        ):
            self.rss[name] = {
                "blob_bytes": size,
                "baseline_rss_bytes": meter.baseline,
                "peak_rss_bytes": meter.peak,
                "growth_bytes": meter.growth,
                "growth_mib": meter.growth / MIB,
                "kernel_high_water_mark_used": meter.hwm_reset,
                "seconds": seconds,
                "mb_per_s": size / seconds / 1e6,
            }


def _put_get_rows(
    caller: GrpcCaller,
    pids: list[int],
    put_name: str | None,
    get_name: str | None,
    docs: Documents,
    pick_get: Callable[[], bytes],
) -> dict[str, tuple[Op, int, list[int]]]:
    """put_small's and get_small's workloads sent to another server of ours, under these names."""
    rows: dict[str, tuple[Op, int, list[int]]] = {}
    if put_name:
        rows[put_name] = (lambda n: caller.call_put(docs.put_request(n)), KIB, pids)
    if get_name:
        rows[get_name] = (lambda n: caller.call_get(pick_get()), KIB, pids)
    return rows


def paired_order(names: list[str], trial: int) -> list[str]:
    """The workloads of one trial, each `base_X` right next to its `X`, taking turns first.

    Ours and the baseline then run in the same minutes and neither always
    follows the same workload (a put burst leaves the file system slower for
    a while).
    """
    order: list[str] = []
    for name in names:
        if name.startswith("base_"):
            continue
        pair = [name, f"base_{name}"] if f"base_{name}" in names else [name]
        order += pair[::-1] if trial % 2 else pair
    return order


def trial_order(names: list[str], trial: int) -> list[tuple[str, str | None]]:
    """The runs of one trial: (workload, the PAIRED row it is the reference for, or None).

    As `paired_order`, and each PAIRED row whose reference is measured gets a
    reference run of its own right beside it: reference first in one trial and
    second in the next, and from one row to the next within a trial (ABBA), so
    that neither side always follows the other or the same workload.
    """
    order: list[tuple[str, str | None]] = []
    turn = trial
    for name in paired_order(names, trial):
        reference = PAIRED.get(name)
        if reference is None or reference not in names:
            order.append((name, None))
            continue
        pair: list[tuple[str, str | None]] = [(reference, name), (name, None)]
        order += pair[::-1] if turn % 2 else pair
        turn += 1
    return order


async def _retry(call: Callable[[], Awaitable[Any]], seconds: float = 10.0) -> Any:
    """Retries while a freshly started process does not accept connections yet."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- results -----------------------------------------------------------------------------


def checks(
    summaries: dict[str, Summary],
    rss: dict[str, dict[str, float]],
    references: dict[str, list[Trial]] | None = None,
) -> list[dict[str, Any]]:
    """Every target of issue 5 with its measured value and verdict.

    A PAIRED row with `references` (its reference's trials run beside its own) is
    held to the median of its per-trial ratios; `ceiling_value` is then the median
    of those reference trials, and `trial_ratios` lists the pairs' ratios.
    """
    references = references or {}
    found: list[dict[str, Any]] = []
    peer_targets = [
        Target(t.workload, t.metric, t.ceilings, t.minimum) for t in bench_peers.TARGETS
    ]
    for target in [*TARGETS, *peer_targets]:
        present = [c for c in target.ceilings if c in summaries]
        if target.workload not in summaries or not present:
            continue
        if target.workload in references:
            found.append(_paired_check(target, summaries[target.workload], references))
            continue
        value = getattr(summaries[target.workload], target.metric)
        pick = max if target.fastest else min
        ceiling_name = pick(present, key=lambda c: getattr(summaries[c], target.metric))
        ceiling = getattr(summaries[ceiling_name], target.metric)
        ratio = value / ceiling
        found.append(
            {
                "name": f"{target.workload} / {ceiling_name}",
                "workload": target.workload,
                "kind": "ratio",
                "metric": target.metric,
                "value": value,
                "ceiling": ceiling_name,
                "ceiling_value": ceiling,
                "ratio": ratio,
                "target": f">= {target.minimum:.2f}" if target.minimum else "info",
                "pass": ratio >= target.minimum,
                "counted": bool(target.minimum),
            }
        )
    for name in SMALL_WORKLOADS:
        if name in summaries:
            tail = summaries[name].p99_ms / summaries[name].p50_ms
            found.append(
                {
                    "name": f"{name} p99/p50",
                    "workload": name,
                    "kind": "tail",
                    "ratio": tail,
                    "target": f"<= {MAX_TAIL_RATIO:.0f}",
                    "pass": tail <= MAX_TAIL_RATIO,
                }
            )
    for name, figures in rss.items():
        found.append(
            {
                "name": f"{name} growth",
                "workload": name,
                "kind": "rss",
                "value": figures["growth_mib"],
                "target": f"<= {MAX_RSS_GROWTH // MIB} MiB",
                "pass": figures["growth_bytes"] <= MAX_RSS_GROWTH,
            }
        )
    return found


def _paired_check(
    target: Target, ours: Summary, references: dict[str, list[Trial]]
) -> dict[str, Any]:
    beside = references[target.workload]
    paired = [
        getattr(a, target.metric) / getattr(b, target.metric)
        for a, b in zip(ours.trials, beside, strict=True)
    ]
    ratio = balanced_ratio(paired)
    # For information: the same pairs' server CPU per call, reference / row. Outside load
    # moves it less than ops/s (a call's CPU stays, the waits for the core go).
    cpu = [
        _cpu_per_call(b) / _cpu_per_call(a)
        for a, b in zip(ours.trials, beside, strict=True)
        if _cpu_per_call(a) and _cpu_per_call(b)
    ]
    return {
        "name": f"{target.workload} / {target.ceilings[0]}",
        "workload": target.workload,
        "kind": "ratio",
        "metric": target.metric,
        "value": getattr(ours, target.metric),
        "ceiling": target.ceilings[0],
        "ceiling_value": statistics.median(getattr(t, target.metric) for t in beside),
        "ratio": ratio,
        "paired": True,
        "trial_ratios": paired,
        "cpu_ratio": statistics.median(cpu) if cpu else None,
        "target": f">= {target.minimum:.2f}" if target.minimum else "info",
        "pass": ratio >= target.minimum,
        "counted": bool(target.minimum),
    }


def balanced_ratio(per_trial: list[float]) -> float:
    """A paired row's ratio from its per-trial ratios: the median over consecutive couples
    of trials of their geometric mean (one trial alone: its own ratio).

    The reference runs first in one trial and second in the next, so a couple holds
    both orders, and whatever running second costs cancels in its geometric mean: the
    first one's file writeback landing on the second above all, for puts. The median
    of an odd number of trials took the side of the order that ran more often: with
    three trials the A/A control's puts came out 0.86 on a quiet machine.
    """
    couples = [math.sqrt(a * b) for a, b in zip(per_trial[0::2], per_trial[1::2], strict=False)]
    return statistics.median(couples) if couples else per_trial[0]


def _cpu_per_call(trial: Trial) -> float:
    return (trial.server_cpu or 0.0) / trial.ops_per_s


BASELINE_WORKLOADS = ("put_small", "get_small", "batch_put", "put_large", "get_large")


def baseline_ratios(summaries: dict[str, Summary]) -> dict[str, dict[str, Any]]:
    """ours / baseline per workload: the ratio of medians and the range of per-trial ratios.

    Trials of ours and of the baseline alternate, so trial i of each ran in
    the same minutes; the spread of their ratios shows how noisy the run was.
    """
    found: dict[str, dict[str, Any]] = {}
    for name in BASELINE_WORKLOADS:
        ours, base = summaries.get(name), summaries.get(f"base_{name}")
        if ours is None or base is None:
            continue
        metric = "mb_per_s" if name.endswith("_large") else "ops_per_s"
        paired = [
            getattr(a, metric) / getattr(b, metric)
            for a, b in zip(ours.trials, base.trials, strict=False)
        ]
        found[name] = {
            "metric": metric,
            "ours": getattr(ours, metric),
            "baseline": getattr(base, metric),
            "ratio": getattr(ours, metric) / getattr(base, metric),
            "trial_ratios": paired,
        }
    return found


def baseline_table(tree: str, ratios: dict[str, dict[str, Any]]) -> str:
    lines = [f"[this tree / baseline tree {tree}, interleaved]"]
    for name, r in ratios.items():
        unit = "ops/s" if r["metric"] == "ops_per_s" else "MB/s"
        spread = f"{min(r['trial_ratios']):.2f}-{max(r['trial_ratios']):.2f}"
        lines.append(
            f"{name:<26}{r['ours']:>9.1f} vs {r['baseline']:>9.1f} {unit:<6}"
            f"  ratio {r['ratio']:.2f}  (per trial {spread})"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "load_average_after": os.getloadavg(),
    }


def disk_of(path: Path) -> dict[str, Any]:
    """The file system and device that hold `path`."""
    best = None
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and (
            best is None or len(part.mountpoint) > len(best.mountpoint)
        ):
            best = part
    info: dict[str, Any] = {"path": str(path)}
    if best is not None:
        info.update(device=best.device, fstype=best.fstype, mountpoint=best.mountpoint)
        name = Path(best.device).name
        rotational = Path(f"/sys/block/{name}/queue/rotational")
        if rotational.exists():
            info["rotational"] = rotational.read_text().strip() == "1"
    return info


ORDER = [
    (
        "ceilings",
        [
            "echo_put",
            "echo_put_sync",
            "echo_get",
            "echo_get_sync",
            "echo_batch_put",
            "echo_batch_put_sync",
            "echo_batch_get",
            "echo_batch_get_sync",
            "echo_get_stream",
            "echo_put_stream",
            "disk_small_files",
            "disk_small_files_dirsync",
            "disk_seq_write",
            "sha256",
        ],
    ),
    (
        "service over gRPC",
        ["put_small", "get_small", "put_dedup", "batch_put", "batch_get", "put_large", "get_large"],
    ),
    ("peers (BuildGrid bg_, Stepflow sf_), same load, same core", bench_peers.ROWS),
    ("stepflow.v1 over gRPC", ["stepflow_put", "stepflow_get"]),
    ("metrics on (--metrics-port)", ["metrics_put_small", "metrics_get_small"]),
    ("tracing on (--otlp-endpoint)", ["tracing_put_small", "tracing_get_small"]),
    ("TLS + bearer token on", ["tls_put_small", "tls_get_small"]),
    ("at the --max-bytes cap (LRU eviction)", ["put_small_at_cap"]),
    ("bridge over HTTP", ["bridge_put", "bridge_get"]),
    ("A/A control: a second plain server", ["control_put_small", "control_get_small"]),
    (
        "baseline tree over gRPC",
        ["base_put_small", "base_get_small", "base_batch_put", "base_put_large", "base_get_large"],
    ),
]


def table(
    summaries: dict[str, Summary], found: list[dict[str, Any]], rss: dict[str, dict[str, float]]
) -> str:
    ratio_of: dict[str, dict[str, Any]] = {}
    for c in found:  # the first ratio of a workload (its echo); the peers' are listed below
        if c["kind"] == "ratio":
            ratio_of.setdefault(c["workload"], c)
    tail_of = {c["workload"]: c for c in found if c["kind"] == "tail"}
    head = (
        f"{'workload':<26}{'ops/s':>9}{'MB/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu srv/load':>14}"
        f"  {'ratio vs ceiling':<32}{'target':>8}{'':>6}{'p99/p50':>9}{'':>6}"
    )
    lines = [head, "-" * len(head)]
    for title, names in ORDER:
        present = [n for n in names if n in summaries]
        if not present:
            continue
        lines.append(f"[{title}]")
        for name in present:
            s = summaries[name]
            cpu = f"{_fmt(s.server_cpu, 2)}/{_fmt(s.loader_cpu, 2)}"
            line = (
                f"{name:<26}{s.ops_per_s:>9.1f}{s.mb_per_s:>9.1f}{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}"
                f"{cpu:>14}"
            )
            check = ratio_of.get(name)
            if check:
                vs = f"{check['ratio']:.2f} x {check['ceiling']}"
                vs += " (paired)" if check.get("paired") else ""
                line += f"  {vs:<32}{check['target']:>8}{_verdict(check):>6}"
            elif name in tail_of:
                line += f"  {'':<32}{'':>8}{'':>6}"
            tail = tail_of.get(name)
            if tail:
                line += f"{tail['ratio']:>9.2f}{_verdict(tail):>6}"
            lines.append(line)
    if rss:
        lines.append("[server RSS growth during a streamed blob]")
        for check in found:
            if check["kind"] == "rss":
                figures = rss[check["workload"]]
                lines.append(
                    f"{check['workload']:<26}{'':>9}{figures['mb_per_s']:>9.1f}"
                    f"  growth {figures['growth_mib']:.1f} MiB"
                    f" of {figures['blob_bytes'] // MIB} MiB"
                    f"  (target {check['target']}){_verdict(check):>6}"
                )
    paired = [c for c in found if c.get("paired")]
    if paired:
        lines.append(
            "[paired ratios: each trial / its reference's trial run beside it;"
            " cpu: the reference's server CPU per call / the row's, for information]"
        )
        for check in paired:
            each = ", ".join(f"{r:.2f}" for r in check["trial_ratios"])
            lines.append(
                f"{check['workload']:<26}{check['ratio']:.2f} x {check['ceiling']:<12}"
                f"cpu {_fmt(check['cpu_ratio'], 2):<6}"
                f"(range {min(check['trial_ratios']):.2f}-{max(check['trial_ratios']):.2f};"
                f" per trial {each})"
            )
    counted = [c for c in found if c.get("counted", True)]
    peers = [c for c in counted if c["kind"] == "ratio" and c["ceiling"] in bench_peers.ROWS]
    if peers:
        lines.append("[against the peers (issue 17 point 4)]")
        for check in peers:
            lines.append(
                f"{check['workload']:<26}{check['value']:>9.1f} vs {check['ceiling_value']:>9.1f}"
                f"  {check['ratio']:.2f} x {check['ceiling']:<22}{check['target']:>8}"
                f"{_verdict(check):>6}"
            )
    passed = sum(1 for c in counted if c["pass"])
    lines.append(f"targets met: {passed} of {len(counted)}")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(check: dict[str, Any]) -> str:
    if not check.get("counted", True):
        return ""
    return "PASS" if check["pass"] else "MISS"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------


def start_processes(
    settings: Settings, split: CpuSplit, work: Path, baseline_tree: Path | None = None
) -> tuple[Child, Child, Child, Child | None, Child, str]:
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith("BLOBSTORE_")}
    os.environ.clear()
    os.environ.update(env_clean)
    server_env = dict(item.split("=", 1) for item in settings.server_env)
    echo = start_echo_server(work / "echo.log", split.server, env=server_env)
    echo_sync = start_echo_server(
        work / "echo-sync.log", split.server, "--style", "sync", name="sync echo", env=server_env
    )
    server = start_blobstore_server(work, split.server, server_env)
    baseline = None
    if baseline_tree is not None:
        baseline = start_baseline_server(baseline_tree, work / "baseline", split.server, server_env)
    port = server.address.rsplit(":", 1)[1]
    bridge_cpus = {"server": split.server, "load": split.load, "any": None}[settings.bridge_cpu]
    bridge = start_child(
        "bridge",
        python_argv(
            "-m", "jsonrpc_bridge.cli", "--grpc-target", server.address, "--http", "127.0.0.1:0"
        ),
        cpus=bridge_cpus,
        log_path=work / "bridge.log",
        ready=re.compile(rf"(?:https?://)?(127\.0\.0\.1:(?!{port}\b)(?!0\b)\d+)"),
        env=server_env,
    )
    where = {
        "any": "not pinned: the OS places it on either core, as in a deployment",
        "server": "pinned with the server side",
        "load": "pinned with the load generator",
    }[settings.bridge_cpu]
    return echo, echo_sync, server, baseline, bridge, where


def start_metered_server(work: Path, cpus: frozenset[int] | None, settings: Settings) -> Child:
    """Our server as shipped with metrics on (/metrics on a free loopback port): the
    metrics_* rows are its put_small and get_small, as ratios to the plain server's."""
    work.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    env = dict(item.split("=", 1) for item in settings.server_env)
    env["BLOBSTORE_METRICS_PORT"] = str(metrics_port)
    return start_blobstore_server(work, cpus, env)


def capped_bytes(settings: Settings) -> int:
    return (1 if settings.quick else 16) * MIB


def start_capped_server(work: Path, cpus: frozenset[int] | None, settings: Settings) -> Child:
    """Our server with --max-bytes: the put_small_at_cap row, as a ratio to put_small."""
    work.mkdir(parents=True, exist_ok=True)
    env = dict(item.split("=", 1) for item in settings.server_env)
    env["BLOBSTORE_MAX_BYTES"] = str(capped_bytes(settings))
    return start_blobstore_server(work, cpus, env)


def start_traced_server(
    work: Path, cpus: frozenset[int] | None, settings: Settings
) -> tuple[Child, Child]:
    """Our server with tracing on, exporting every call's span (in batches, as shipped)
    to an OTLP/HTTP sink (otlp_sink.py, on the load generator's cores): the tracing_*
    rows are its put_small and get_small, as ratios to the plain server's."""
    work.mkdir(parents=True, exist_ok=True)
    sink = start_child(
        "otlp sink",
        python_argv(str(Path(__file__).resolve().parent / "otlp_sink.py")),
        cpus=None,
        log_path=work / "sink.log",
        ready=re.compile(r"listening on (127\.0\.0\.1:\d+)"),
    )
    env = dict(item.split("=", 1) for item in settings.server_env)
    env["BLOBSTORE_OTLP_ENDPOINT"] = f"http://{sink.address}"
    return start_blobstore_server(work, cpus, env), sink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the blob store against the machine's ceilings (issue 5).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: only shows it works")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=SMALL_WORKLOADS,
        metavar="ROW",
        help="run only this small-call row (repeatable), with the row it is paired with; "
        "no disk, large-blob or RSS rows (e.g. a quiet re-run of --only metrics_get_small)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("bench-results.json"), help="results file"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where data and logs go (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data, logs)")
    parser.add_argument(
        "--trials",
        type=int,
        help="trials per small-call workload (6; quick 1); even, for the paired rows",
    )
    parser.add_argument("--seconds", type=float, help="seconds per trial (2; quick 0.25)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (16)")
    parser.add_argument("--pool", type=int, help="stored documents read back (1000; quick 32)")
    parser.add_argument("--large-mib", type=int, help="large blob size in MiB (64; quick 2)")
    parser.add_argument("--reps", type=int, help="large blob repetitions (5; quick 3)")
    parser.add_argument(
        "--rss-mib", type=int, help="blob streamed for the RSS check (1024; quick 8)"
    )
    parser.add_argument(
        "--bridge-cpu",
        choices=["server", "load", "any"],
        default="any",
        help="where the bridge runs: unpinned, placed by the OS as in a deployment (default); "
        "with the server; with the load generator",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="to try a setting: an environment variable for every server-side process, "
        "the echo ceiling included (repeatable; not for the published figures)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        metavar="PATH",
        help="also run our server from another source tree (e.g. a `git worktree` of an "
        "older commit), interleaved with ours, and print ours/baseline for put_small, "
        "get_small, put_large and get_large",
    )
    parser.add_argument(
        "--startup-blobs",
        type=int,
        metavar="N",
        help="instead: time the server's start-up (usage index rebuild) on a folder of N "
        "blobs, e.g. 1000000 (scripts/bench/bench_startup.py)",
    )
    parser.add_argument(
        "--storage",
        choices=["s3"],
        help="s3: benchmark the object-store backend instead, against obstore on a SeaweedFS "
        "this run starts (scripts/bench/bench_s3.py)",
    )
    parser.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="leave out BuildGrid and stepflow-server (never run with --quick)",
    )
    args = parser.parse_args(argv)
    if args.startup_blobs:
        import bench_startup

        return bench_startup.run(args.startup_blobs, args.work_dir, args.json, args.keep)
    if args.storage == "s3":
        import bench_s3

        return bench_s3.run(args)
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    settings = Settings.from_args(args)
    split = CpuSplit.detect()
    pin_self(split.load)
    work = Path(tempfile.mkdtemp(prefix="blobstore-bench-", dir=args.work_dir))
    say(f"work dir {work}; {split.describe()}")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    bench: Bench | None = None
    children: list[Child] = []
    try:
        tree = args.baseline_tree.resolve() if args.baseline_tree else None
        started_ = start_processes(settings, split, work, tree)
        echo, echo_sync, server, baseline, bridge, bridge_note = started_
        children = [c for c in (bridge, baseline, server, echo, echo_sync) if c is not None]
        metered = start_metered_server(work / "metered", split.server, settings)
        children.append(metered)
        traced, sink = start_traced_server(work / "traced", split.server, settings)
        children += [traced, sink]
        server_env = dict(item.split("=", 1) for item in settings.server_env)
        secured = start_secured_server(work / "secured", split.server, server_env)
        children.append(secured[0])
        capped = start_capped_server(work / "capped", split.server, settings)
        children.append(capped)
        (work / "control").mkdir()
        control = start_blobstore_server(work / "control", split.server, server_env)
        children.append(control)
        say(f"bridge: {bridge_note}")
        peers = None
        if args.peers and not settings.quick:
            say("peers: BuildGrid and stepflow-server (their venvs are made on first use)")
            peers = bench_peers.start_peers(work, split.server)
            children += peers.children
        bench = Bench(
            settings,
            work,
            echo,
            server,
            bridge,
            baseline,
            metered,
            echo_sync,
            peers,
            traced,
            secured,
            capped,
            control,
        )
        asyncio.run(bench.run())
    except (
        StartError,
        LoadError,
        BlobStoreError,
        grpc.RpcError,
        aiohttp.ClientError,
        subprocess.CalledProcessError,
    ) as exc:
        say(f"FAILED: {exc}")
        for child in children:
            say(f"--- {child.name} log ---\n{child.log()[-3000:]}")
        return 1
    finally:
        for child in children:
            child.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    summaries = {name: Summary.of(trials) for name, trials in bench.trials.items()}
    found = checks(summaries, bench.rss, bench.references)
    versus = baseline_ratios(summaries)
    results = {
        "version": 1,
        "started": started,
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine(),
        "load_average_before": load_before,
        "disk": disk_of(work),
        "pinning": split.describe(),
        "bridge": bridge_note,
        "settings": asdict(settings),
        "workloads": {name: s.to_json() for name, s in summaries.items()},
        # The reference trials run beside each PAIRED row (put_small or get_small again).
        "references": {
            name: Summary.of(trials).to_json() for name, trials in bench.references.items()
        },
        "rss": bench.rss,
        "checks": found,
        "baseline": {"tree": str(args.baseline_tree), "ratios": versus} if versus else None,
        "medians": {c["name"]: c.get("ratio", c.get("value")) for c in found},
    }
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(summaries, found, bench.rss), flush=True)
    if versus:
        print(baseline_table(str(args.baseline_tree), versus), flush=True)
    if settings.server_env:
        print(f"NOT as shipped: server-side environment {' '.join(settings.server_env)}")
    print(
        f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores (other work on the machine skews the figures)",
        flush=True,
    )
    say(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
