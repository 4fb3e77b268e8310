"""Something other than a regular file where a blob file belongs (issue 10, point 3).

Real server processes, and real folders, FIFOs, listening Unix sockets and symlinks
made at blob paths behind the server's back. Blob files are opened with
O_NOFOLLOW|O_NONBLOCK: each is DATA_LOSS at once (a FIFO used to hang the whole
server, a folder to be UNAVAILABLE forever), moved to quarantine/, counted as
missing by FindMissing, replaced by the next put, and reported by `blobstore verify`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import BlobClient
from blobstore.retry import RetryPolicy
from tests.faults import EXIT_CORRUPT, check_blob_file, status_of, verify_cli
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB, blob_path, raw_stub, serve_for_module, sha256_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_for_module(tmp_path_factory)


@pytest.fixture(scope="module")
def direct(server: ServerProcess) -> Iterator[BlobClient]:
    with BlobClient(server.target, timeout=30, retry=RetryPolicy.off()) as client:
        yield client


def _quarantined(data_dir: Path, blob_id: str) -> list[Path]:
    return sorted((data_dir / "quarantine").glob(blob_id.removeprefix("sha256:") + ".*"))


def _make_odd_file(path: Path, kind: str, tmp: Path) -> socket.socket | None:
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        # Bound at a short path (AF_UNIX allows about 100 bytes), then moved into place.
        short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp")) / "s"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(short))
        listener.listen()
        os.rename(short, path)
        short.parent.rmdir()
        return listener
    elif kind == "dangling_symlink":
        path.symlink_to(tmp / "nowhere")
    elif kind == "symlink_to_a_copy":
        target = tmp / f"elsewhere-{path.name}"
        path.symlink_to(target)
    return None


ODD_KINDS = ["directory", "fifo", "socket", "dangling_symlink", "symlink_to_a_copy"]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_a_non_regular_file_at_a_blob_path_is_data_loss_and_a_put_heals_it(
    server: ServerProcess, direct: BlobClient, kind: str, tmp_path: Path
) -> None:
    data_dir = server.data_dir
    content = os.urandom(4000)
    blob_id = sha256_id(content)
    path = blob_path(data_dir, blob_id)
    if kind == "symlink_to_a_copy":
        # A sound copy, but reached through a link the server did not make: refused too.
        direct.put_bytes(content)
        shutil.copy(path, tmp_path / f"elsewhere-{path.name}")
        path.unlink()
    listener = _make_odd_file(path, kind, tmp_path)
    try:
        with raw_stub(server.target) as stub:
            with pytest.raises(grpc.RpcError) as failed:
                stub.Get(pb.GetRequest(id=blob_id), timeout=10)
            if kind == "dangling_symlink":
                assert failed.value.code() in (
                    grpc.StatusCode.DATA_LOSS,
                    grpc.StatusCode.NOT_FOUND,
                )
            else:
                assert status_of(failed.value)[:2] == (grpc.StatusCode.DATA_LOSS, "DATA_LOSS")
            # Out of the way, kept for analysis; the server still answers everything else.
            assert not os.path.lexists(path)
            assert len(_quarantined(data_dir, blob_id)) == 1
            assert stub.Stat(pb.StatRequest(id=blob_id), timeout=10).exists is False
        reply = direct.put_bytes(content)
        assert reply.created and reply.info.blob_id == blob_id
        assert direct.get(blob_id).data == content
        assert check_blob_file(path) == content
    finally:
        if listener is not None:
            listener.close()


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_a_put_over_a_non_regular_file_heals_it(
    server: ServerProcess, direct: BlobClient, kind: str, tmp_path: Path
) -> None:
    """No read first: the put itself meets the odd file (unary small and streamed)."""
    data_dir = server.data_dir
    for content in (os.urandom(2000), os.urandom(5 * MiB)):
        blob_id = sha256_id(content)
        path = blob_path(data_dir, blob_id)
        listener = _make_odd_file(path, kind, tmp_path)
        try:
            with raw_stub(server.target) as stub:
                missing = stub.FindMissing(pb.FindMissingRequest(ids=[blob_id]), timeout=10)
            assert list(missing.missing_ids) == [blob_id]  # so a client puts it
            reply = direct.put_bytes(content)
            assert reply.info.blob_id == blob_id
            assert check_blob_file(path) == content
            assert direct.get(blob_id).data == content
        finally:
            if listener is not None:
                listener.close()


def test_verify_reports_and_quarantines_non_regular_files(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()  # a server of its own: verify moves things in its folder
    with BlobClient(server.target, timeout=30) as client:
        kept = [client.put_bytes(os.urandom(1000 + i)).info.blob_id for i in range(3)]
    listeners = []
    odd = {}
    for kind in ODD_KINDS:
        blob_id = sha256_id(kind.encode())
        path = blob_path(server.data_dir, blob_id)
        if kind == "symlink_to_a_copy":
            (tmp_path / f"elsewhere-{path.name}").write_bytes(b"anything")
        listener = _make_odd_file(path, kind, tmp_path)
        if listener is not None:
            listeners.append(listener)
        odd[kind] = path
    try:
        checked = verify_cli(server.data_dir, "--no-quarantine")
        assert checked.returncode == EXIT_CORRUPT, checked.stdout + checked.stderr
        for path in odd.values():
            assert path.name in checked.stdout
            assert os.path.lexists(path)
        done = verify_cli(server.data_dir)
        assert done.returncode == EXIT_CORRUPT, done.stdout + done.stderr
        assert all(not os.path.lexists(path) for path in odd.values())
        again = verify_cli(server.data_dir)
        assert again.returncode == 0, again.stdout + again.stderr
        with BlobClient(server.target, timeout=30) as client:
            assert all(client.stat(blob_id) is not None for blob_id in kept)
    finally:
        for listener in listeners:
            listener.close()
