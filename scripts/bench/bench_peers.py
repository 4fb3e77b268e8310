"""Peers in the same run (issue 17): BuildGrid's CAS and Stepflow's own blob service.

Each peer runs from a venv of its own, made by the benchmark on first use and pinned
like our server (never our .venv: they pin grpcio and protobuf of their own):

- **BuildGrid** 0.4.4 (PyPI `buildgrid`, `.venv-bench-buildgrid`, pinned by
  scripts/bench/requirements-buildgrid.txt): `bgd server start` with CAS and ByteStream
  over its `!disk-storage` (no fsync, no verification on read). Small calls are
  `BatchUpdateBlobs` / `BatchReadBlobs` of one blob, the batch rows of BATCH blobs,
  large blobs `ByteStream.Write` / `Read` in 1 MiB messages.
- **Stepflow** `stepflow-server` 0.13.0 (PyPI `stepflow-orchestrator`, the venv
  scripts/stepflow_sdks makes for tests/stepflow/): its `stepflow.v1.BlobService`
  PutBlob/GetBlob over its filesystem blob store (no fsync) and its sqlite one. Its
  unary messages are capped at 4 MiB, so it has no large-blob rows.

Both are pinned to the server core like ours and driven by the same load generator
with pre-built raw requests (REAPI messages are encoded here by hand: the load
generator does not import BuildGrid). `--quick` runs without them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from bench_load import KIB, Documents, LoadError, Op, random_picker
from bench_procs import ROOT, Child, start_child

from blobstore.api.stepflow.v1 import blobs_pb2 as stepflow_pb
from blobstore.client import CHANNEL_OPTIONS

BUILDGRID_VENV = ROOT / ".venv-bench-buildgrid"
BUILDGRID_REQUIREMENTS = ROOT / "scripts" / "bench" / "requirements-buildgrid.txt"
STEPFLOW_VENV = ROOT / ".venv-stepflow-13"
_STEPFLOW_READY = re.compile(r'\{"port":(\d+)\}')
_BUILDGRID_READY = re.compile(r"(Starting) BuildGrid server")
_CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
_BYTESTREAM = "/google.bytestream.ByteStream/"
_STEPFLOW = "/stepflow.v1.BlobService/"
INSTANCE = ""
"""BuildGrid's instance name: the unnamed one."""
CHUNK = 1024 * 1024


def _pip_install(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


@dataclass(frozen=True)
class PeerTarget:
    """A target of issue 17 point 4 against a peer: ours >= minimum x the peer's figure."""

    workload: str
    metric: str
    ceilings: tuple[str, ...]
    minimum: float
    fastest: bool = False


TARGETS = [
    PeerTarget("put_small", "ops_per_s", ("bg_put_small",), 1.5),
    PeerTarget("put_small", "ops_per_s", ("sf_sqlite_put_small",), 1.0),
    PeerTarget("get_small", "ops_per_s", ("bg_get_small",), 1.5),
    PeerTarget("batch_put", "ops_per_s", ("bg_batch_put",), 1.5),
    PeerTarget("put_large", "mb_per_s", ("bg_put_large",), 2.0),
]
ROWS = [
    "bg_put_small",
    "bg_get_small",
    "bg_batch_put",
    "bg_batch_get",
    "bg_put_large",
    "bg_get_large",
    "sf_fs_put_small",
    "sf_fs_get_small",
    "sf_sqlite_put_small",
    "sf_sqlite_get_small",
]


# -- venvs -----------------------------------------------------------------------------


def buildgrid_python() -> Path:
    """The Python of the BuildGrid venv, made (once per requirements file) if needed."""
    python = BUILDGRID_VENV / "bin" / "python"
    stamp = BUILDGRID_VENV / (
        ".installed-" + hashlib.sha256(BUILDGRID_REQUIREMENTS.read_bytes()).hexdigest()[:16]
    )
    if not stamp.exists():
        subprocess.run(["python3", "-m", "venv", str(BUILDGRID_VENV)], check=True, timeout=300)
        subprocess.run(
            [*_pip_install(python), "-r", str(BUILDGRID_REQUIREMENTS)],
            check=True,
            timeout=1800,
        )
        stamp.touch()
    return python


def stepflow_server() -> Path:
    """`stepflow-server` from the Stepflow venv, made by scripts/stepflow_sdks if needed."""
    subprocess.run([str(ROOT / "scripts" / "stepflow_sdks")], check=True, timeout=1800)
    found = sorted(
        STEPFLOW_VENV.glob("lib/python*/site-packages/stepflow_orchestrator/bin/stepflow-server")
    )
    if not found:
        raise LoadError(f"no stepflow-server binary under {STEPFLOW_VENV}")
    return found[0]


# -- processes -------------------------------------------------------------------------


def start_stepflow(work: Path, cpus: frozenset[int] | None, store: str) -> Child:
    """stepflow-server with its blobs in a `store` ("filesystem" or "sqlite") under work."""
    folder = work / f"stepflow-{store}"
    folder.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, str] = (
        {"type": "filesystem", "directory": str(folder / "blobs")}
        if store == "filesystem"
        else {"type": "sqlite", "databaseUrl": f"sqlite:{folder / 'blobs.db'}?mode=rwc"}
    )
    config = {
        "plugins": {"builtin": {"type": "builtin"}},
        "routes": {"/builtin": [{"plugin": "builtin"}]},
        "storageConfig": {"metadata": {"type": "inMemory"}, "blobs": blobs},
    }
    config_path = folder / "stepflow-config.json"
    config_path.write_text(json.dumps(config))
    argv = [str(stepflow_server()), "--port", "0", "--log-level", "warn"]
    child = start_child(
        f"stepflow-server ({store})",
        [*argv, "--config", str(config_path)],
        cpus=cpus,
        log_path=folder / "stepflow-server.log",
        ready=_STEPFLOW_READY,
        timeout=60,
    )
    child.address = f"127.0.0.1:{child.address}"
    return child


def start_buildgrid(work: Path, cpus: frozenset[int] | None) -> Child:
    """`bgd server start` with CAS and ByteStream over disk storage under work/buildgrid."""
    folder = work / "buildgrid"
    (folder / "cas").mkdir(parents=True, exist_ok=True)
    config = folder / "buildgrid.yml"
    port = _free_port()
    config.write_text(BUILDGRID_CONFIG.format(cas=folder / "cas", port=port))
    bgd = buildgrid_python().parent / "bgd"
    child = start_child(
        "BuildGrid",
        [str(bgd), "server", "start", str(config)],
        cpus=cpus,
        log_path=folder / "bgd.log",
        ready=_BUILDGRID_READY,
        timeout=120,
    )
    child.address = f"127.0.0.1:{port}"  # it prints no address; Peers.ready() waits for it
    return child


BUILDGRID_CONFIG = """\
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true

authorization:
  method: none

# Its default is 5 x the cores (10 here), under the benchmark's 16 callers: calls past
# it are refused ("Concurrent RPC limit exceeded!").
thread-pool-size: 32

storages:
  - !disk-storage &cas-storage
    path: {cas}

instances:
  - name: ''
    services:
      - !cas
        storage: *cas-storage
      - !bytestream
        storage: *cas-storage
"""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- REAPI messages, by hand -----------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def digest(data: bytes) -> bytes:
    """build.bazel.remote.execution.v2.Digest of `data`."""
    return _bytes_field(1, hashlib.sha256(data).hexdigest().encode()) + _int_field(2, len(data))


def batch_update_request(blobs: list[bytes]) -> bytes:
    """BatchUpdateBlobsRequest{instance_name, requests: [{digest, data}]}."""
    return b"".join(
        _bytes_field(2, _bytes_field(1, digest(blob)) + _bytes_field(2, blob)) for blob in blobs
    )


def batch_read_request(blobs: list[bytes]) -> bytes:
    """BatchReadBlobsRequest{instance_name, digests}."""
    return b"".join(_bytes_field(2, digest(blob)) for blob in blobs)


def write_requests(data: bytes) -> list[bytes]:
    """ByteStream WriteRequests of `data` in CHUNK pieces; the last one finishes the write."""
    name = f"uploads/{uuid.uuid4()}/blobs/{hashlib.sha256(data).hexdigest()}/{len(data)}"
    view = memoryview(data)
    messages = []
    for offset in range(0, len(data), CHUNK):
        piece = bytes(view[offset : offset + CHUNK])
        message = _int_field(2, offset) + _bytes_field(10, piece)
        if offset == 0:
            message = _bytes_field(1, name.encode()) + message
        if offset + CHUNK >= len(data):
            message += _int_field(3, 1)
        messages.append(message)
    return messages


def read_request(data: bytes) -> bytes:
    name = f"blobs/{hashlib.sha256(data).hexdigest()}/{len(data)}"
    return _bytes_field(1, name.encode())


# -- the load --------------------------------------------------------------------------

Workloads = dict[str, tuple[Op, int, list[int]]]


class Peers:
    """The peers' processes and callers; their workloads mirror ours."""

    def __init__(self, buildgrid: Child | None, stepflow: dict[str, Child]) -> None:
        self.buildgrid = buildgrid
        self.stepflow = stepflow
        self.children = [c for c in (buildgrid, *stepflow.values()) if c is not None]
        self._channels: dict[str, grpc.aio.Channel] = {}  # made on the run's event loop
        self._pools: dict[str, list[bytes]] = {}
        self._bg_pool: list[bytes] = []

    async def ready(self, seconds: float = 60.0) -> None:
        for child in self.children:
            channel = grpc.aio.insecure_channel(child.address, options=CHANNEL_OPTIONS)
            self._channels[child.name] = channel
        for channel in self._channels.values():
            await asyncio.wait_for(channel.channel_ready(), seconds)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)

    def _unary(self, child: Child, method: str) -> Callable[[bytes], Awaitable[bytes]]:
        call = self._channels[child.name].unary_unary(method, None, None)
        return cast(Callable[[bytes], Awaitable[bytes]], call)

    async def fill(self, docs: Documents, count: int, concurrency: int) -> None:
        """Stores the read pool (the documents ours reads back) in every peer, checked."""
        todo = list(range(count))
        for store, child in self.stepflow.items():
            self._pools[store] = await self._fill_stepflow(store, child, docs, todo, concurrency)
        if self.buildgrid is not None:
            update = self._unary(self.buildgrid, _CAS + "BatchUpdateBlobs")
            read = self._unary(self.buildgrid, _CAS + "BatchReadBlobs")
            blobs = [docs.text(n) for n in todo]
            for start in range(0, count, 100):
                await update(batch_update_request(blobs[start : start + 100]))
            reply = await read(batch_read_request(blobs[:1]))
            if blobs[0] not in reply:
                raise LoadError("BuildGrid's BatchReadBlobs did not return what was stored")
            self._bg_pool = blobs

    async def _fill_stepflow(
        self, store: str, child: Child, docs: Documents, todo: list[int], concurrency: int
    ) -> list[bytes]:
        """Puts documents `todo`; the GetBlobRequests of their ids (Stepflow's own ids)."""
        put = self._unary(child, _STEPFLOW + "PutBlob")
        get = self._unary(child, _STEPFLOW + "GetBlob")
        ids: list[str] = [""] * len(todo)

        async def worker(numbers: list[int]) -> None:
            for n in numbers:
                reply = await put(docs.put_blob_request(n))
                ids[n] = stepflow_pb.PutBlobResponse.FromString(reply).blob_id

        await asyncio.gather(*(worker(todo[i::concurrency]) for i in range(concurrency)))
        requests = [stepflow_pb.GetBlobRequest(blob_id=i).SerializeToString() for i in ids]
        got = stepflow_pb.GetBlobResponse.FromString(await get(requests[0]))
        if got.blob_type != "data" or not got.HasField("json_data"):
            raise LoadError(f"stepflow-server ({store}) read back {got!r}")
        return requests

    def _stepflow_ops(self, child: Child, docs: Documents, pool: list[bytes]) -> tuple[Op, Op]:
        put = self._unary(child, _STEPFLOW + "PutBlob")
        get = self._unary(child, _STEPFLOW + "GetBlob")
        pick = random_picker(pool)

        def put_op(n: int) -> Awaitable[bytes]:
            return put(docs.put_blob_request(n))

        def get_op(n: int) -> Awaitable[bytes]:
            return get(pick())

        return put_op, get_op

    def small_workloads(self, docs: Documents, batch: int) -> Workloads:
        found: Workloads = {}
        for store, child in self.stepflow.items():
            name = "sf_fs" if store == "filesystem" else "sf_sqlite"
            put_op, get_op = self._stepflow_ops(child, docs, self._pools[store])
            found[f"{name}_put_small"] = (put_op, KIB, [child.pid])
            found[f"{name}_get_small"] = (get_op, KIB, [child.pid])
        if self.buildgrid is not None:
            bg = [self.buildgrid.pid]
            update = self._unary(self.buildgrid, _CAS + "BatchUpdateBlobs")
            read = self._unary(self.buildgrid, _CAS + "BatchReadBlobs")
            pool = self._bg_pool
            pick_one = random_picker([batch_read_request([blob]) for blob in pool])
            pick_many = random_picker(
                [batch_read_request(pool[i : i + batch]) for i in range(0, len(pool) - batch + 1)]
            )
            found["bg_put_small"] = (
                lambda n: update(batch_update_request([docs.text(n)])),
                KIB,
                bg,
            )
            found["bg_get_small"] = (lambda n: read(pick_one()), KIB, bg)
            found["bg_batch_put"] = (
                lambda n: update(
                    batch_update_request([docs.text(n * batch + i) for i in range(batch)])
                ),
                KIB,
                bg,
            )
            found["bg_batch_get"] = (lambda n: read(pick_many()), KIB, bg)
        return found

    async def put_large(self, messages: list[bytes]) -> None:
        """ByteStream.Write of pre-built `write_requests(data)`."""
        assert self.buildgrid is not None
        channel = self._channels[self.buildgrid.name]
        write = channel.stream_unary(_BYTESTREAM + "Write", None, None)
        await write(iter(messages))

    async def get_large(self, data: bytes) -> int:
        assert self.buildgrid is not None
        channel = self._channels[self.buildgrid.name]
        read = channel.unary_stream(_BYTESTREAM + "Read", None, None)
        received = 0
        async for message in cast(AsyncIterator[bytes], read(read_request(data))):
            received += len(message)
        if received < len(data):
            raise LoadError(f"BuildGrid's ByteStream.Read returned {received} of {len(data)}")
        return received


def start_peers(work: Path, cpus: frozenset[int] | None) -> Peers:
    """Starts BuildGrid and both Stepflow servers (making their venvs first if needed)."""
    stepflow = {store: start_stepflow(work, cpus, store) for store in ("filesystem", "sqlite")}
    try:
        buildgrid = start_buildgrid(work, cpus)
    except BaseException:
        for child in stepflow.values():
            child.stop()
        raise
    return Peers(buildgrid, stepflow)
