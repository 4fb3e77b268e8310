"""Helpers shared by the stress and fault tests: status reasons, held calls, store checks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.status import reason_of
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, decode_header
from blobstore.storage.filesystem.journal import MAGIC as RECORD_MAGIC
from tests import rpc_helpers
from tests.rpc_helpers import temp_files

if TYPE_CHECKING:
    from blobstore.api.blobstore.v1.blobstore_pb2_grpc import BlobServiceAsyncStub, BlobServiceStub


def status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str | None, str]:
    """(code, reason, message) of a failed call."""
    error = cast(Any, exc)
    return error.code(), reason_of(exc), error.details() or ""


class HeldPut:
    """A PutStream that sends its first message and chunk, then waits until released.

    It keeps one admitted call (and its chunk allowance) busy on the server for as
    long as a test needs, without any sleeping.
    """

    def __init__(self, stub: BlobServiceAsyncStub, data: bytes) -> None:
        self.data = data
        self._release = asyncio.Event()
        self.call = stub.PutStream(self._requests())

    async def _requests(self) -> AsyncIterator[pb.PutStreamRequest]:
        half = len(self.data) // 2
        yield pb.PutStreamRequest(
            blob_type=pb.BLOB_TYPE_BINARY, total_size=len(self.data), chunk=self.data[:half]
        )
        await self._release.wait()
        yield pb.PutStreamRequest(chunk=self.data[half:])

    async def finish(self) -> pb.PutResponse:
        self._release.set()
        return await self.call


async def held_admitted(data_dir: Path, count: int) -> None:
    """Waits until `count` held puts have reached the store (each has its temp file).

    Probing before then could let a probe take the place a held put was meant to have.
    """
    await asyncio.to_thread(
        wait_until, lambda: len(temp_files(data_dir)) >= count, 30, f"{count} held put(s)"
    )


class HeldPutSync:
    """HeldPut for the blocking API: a PutStream future that waits half way until finish()."""

    def __init__(self, stub: BlobServiceStub, data: bytes, timeout: float = 60) -> None:
        self.data = data
        self._release = threading.Event()
        self.future = stub.PutStream.future(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[pb.PutStreamRequest]:
        half = len(self.data) // 2
        yield pb.PutStreamRequest(
            blob_type=pb.BLOB_TYPE_BINARY, total_size=len(self.data), chunk=self.data[:half]
        )
        self._release.wait(120)
        yield pb.PutStreamRequest(chunk=self.data[half:])

    def finish(self, timeout: float = 60) -> pb.PutResponse:
        self._release.set()
        return self.future.result(timeout)


def stored_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").glob("??/*") if p.is_file())


def flip_byte(path: Path, offset: int) -> None:
    """Flips the lowest bit of the byte at `offset` of a file (a disk's silent damage)."""
    with open(path, "r+b") as file:
        file.seek(offset)
        (byte,) = file.read(1)
        file.seek(offset)
        file.write(bytes([byte ^ 0x01]))


def pack_record(data_dir: Path, blob_id: str) -> tuple[Path, int, int] | None:
    """The newest pack record of a blob: (segment, offset, length of the whole record),
    found by its magic and digest and sized by its blob file header; None if none."""
    needle = RECORD_MAGIC + bytes.fromhex(blob_id.removeprefix("sha256:"))
    for path in sorted((data_dir / "packs").glob("*.pack"), reverse=True):
        data = path.read_bytes()
        at = data.rfind(needle)
        if at >= 0:
            header = decode_header(data[at + 36 : at + 36 + HEADER_SIZE])
            return path, at, 36 + header.file_size + 4
    return None


def check_blob_file(path: Path) -> bytes:
    """Returns a stored blob's content after checking its header, size and hash."""
    raw = path.read_bytes()
    header = decode_header(raw[:HEADER_SIZE])
    size = header.size
    content = raw[HEADER_SIZE : len(raw) - header.meta_size]  # the metadata block follows
    assert len(content) == size, f"{path}: {len(content)} bytes, header says {size}"
    assert hashlib.sha256(content).hexdigest() == path.name, f"{path}: content is not its id"
    return content


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Polls `condition` (bounded in time); fails the test if it never holds.

    rpc_helpers.wait_until only reports, for tests that clean up first.
    """
    if not rpc_helpers.wait_until(condition, timeout):
        raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")


@contextlib.contextmanager
def soft_file_limit(soft: int) -> Iterator[int]:
    """Lowers this process's soft RLIMIT_NOFILE while children are started (they inherit it).

    Yields the hard limit. Skips the test if the hard limit leaves no room above `soft`
    for the sockets the test opens.
    """
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < soft + 512:
        pytest.skip(f"the hard open-file limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def raise_own_file_limit() -> None:
    """Gives this (test) process its hard open-file limit, for tests that open many sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_until_closed(sock: socket.socket, timeout: float = 60.0) -> bytes:
    """Everything the peer sends until it closes the connection (fails if it never does)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


EXIT_CORRUPT = 4
"""`blobstore verify`'s exit status when it found problems."""


def verify_cli(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Runs `blobstore verify` on a data folder as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "blobstore.cli", "verify", "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
