"""Disk full, for real: a tiny tmpfs, and a file-size rlimit on the server process.

A put that runs out of space gets RESOURCE_EXHAUSTED (reason STORAGE_FULL), leaves no
partial blob and no temp file, and the server goes on serving; once there is room
again, the same puts succeed. EIO cannot be produced for real here (no device-mapper
in the test environment); docs/reliability.md says what covers it instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.errors import StorageFull
from blobstore.model import BlobType
from blobstore.retry import RetryPolicy
from tests.faults import check_blob_file, status_of, stored_files
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB, temp_files


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs; skipped where mounting is not allowed (not root, no mount(8))."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not installed")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _assert_clean(server: ServerProcess, expected: set[str]) -> None:
    """No temp file, no partial blob: exactly the expected blobs, each intact."""
    assert temp_files(server.data_dir) == []
    files = stored_files(server.data_dir)
    assert {"sha256:" + p.name for p in files} == expected
    for path in files:
        check_blob_file(path)


def test_full_file_system_refuses_puts_cleanly_and_recovers(
    small_fs: Path, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(data_dir=small_fs / "data")
    first = _write(tmp_path / "first", os.urandom(5 * MiB))
    second = _write(tmp_path / "second", os.urandom(5 * MiB))
    unary = os.urandom(3 * MiB + 512 * 1024)
    document = b'{"pad":"' + b"x" * (4 * MiB) + b'"}'
    with BlobClient(server.target, timeout=60, retry=RetryPolicy.off()) as client:
        kept = client.put_file(first).info.blob_id

        with pytest.raises(StorageFull, match="no space left"):
            client.put_file(second)  # streamed
        with pytest.raises(StorageFull):
            client.put_bytes(unary)  # one message
        with pytest.raises(StorageFull):
            client.put_json_text(document)
        _assert_clean(server, {kept})

        # The raw status: RESOURCE_EXHAUSTED with the STORAGE_FULL reason.
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.BlobServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.Put(pb.PutRequest(data=unary), timeout=60)
        assert status_of(failed.value)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL")

        # Still serving: reads, small writes, stats.
        assert client.get(kept).data == first.read_bytes()
        small = client.put_bytes(b"still works").info.blob_id

        # Room again: the same puts now succeed.
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
        stored = {
            client.put_file(second).info.blob_id,
            client.put_bytes(unary).info.blob_id,
            client.put_json_text(document).info.blob_id,
        }
        assert client.get(client.put_bytes(unary).info.blob_id).data == unary
    _assert_clean(server, {kept, small, *stored})
    assert "Traceback" not in server.log()


def test_file_size_limit_refuses_big_puts_and_recovers(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """RLIMIT_FSIZE on the running server: writes past it fail with EFBIG.

    Python ignores SIGXFSZ, so the server gets the error instead of being killed.
    """
    server = start_server()
    process = psutil.Process(server.pid)
    unlimited = process.rlimit(psutil.RLIMIT_FSIZE)
    process.rlimit(psutil.RLIMIT_FSIZE, (1 * MiB, unlimited[1]))
    big = _write(tmp_path / "big", os.urandom(3 * MiB))
    unary = os.urandom(2 * MiB)
    with BlobClient(server.target, timeout=60, retry=RetryPolicy.off()) as client:
        with pytest.raises(StorageFull, match="File too large"):
            client.put_file(big)
        with pytest.raises(StorageFull, match="File too large"):
            client.put_bytes(unary)
        small = client.put_bytes(os.urandom(100 * 1024), BlobType.BINARY).info.blob_id
        _assert_clean(server, {small})

        process.rlimit(psutil.RLIMIT_FSIZE, unlimited)
        stored = {client.put_file(big).info.blob_id, client.put_bytes(unary).info.blob_id}
        assert client.get(client.put_bytes(unary).info.blob_id).data == unary
    assert process.is_running()
    _assert_clean(server, {small, *stored})
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("small", ["files", "packs"])
def test_full_file_system_during_group_commits_loses_nothing_acknowledged(
    small_fs: Path, start_server: Callable[..., ServerProcess], small: str
) -> None:
    """Small puts (the journal's road) until the disk is full, room again, then kill -9.

    A journal append cut short by ENOSPC leaves a torn record; the segment is
    closed with it and later appends go to a new one, so no acknowledged put is
    behind a torn record when the next start replays the journal. The pack store's
    appender does the same, and the next start cuts the torn record back.
    """
    server = start_server("--small-blob-store", small, data_dir=small_fs / "data")
    acknowledged: dict[str, bytes] = {}
    refused = 0
    with BlobClient(server.target, timeout=60, retry=RetryPolicy.off()) as client:
        for _ in range(400):
            data = os.urandom(40 * 1024)
            try:
                acknowledged[client.put_bytes(data).info.blob_id] = data
            except StorageFull:
                refused += 1
                if refused >= 5:
                    break
        assert acknowledged and refused >= 5, "the disk never filled up"
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
        for _ in range(20):
            data = os.urandom(40 * 1024)
            acknowledged[client.put_bytes(data).info.blob_id] = data
    assert "Traceback" not in server.log()
    server.kill()

    restarted = start_server("--small-blob-store", small, data_dir=small_fs / "data")
    assert ("replayed" if small == "files" else "read 2 pack segment(s)") in restarted.log()
    with BlobClient(restarted.target, timeout=60) as client:
        for blob_id, data in acknowledged.items():
            assert client.get(blob_id).data == data
    assert temp_files(restarted.data_dir) == []
    for path in stored_files(restarted.data_dir):
        check_blob_file(path)
