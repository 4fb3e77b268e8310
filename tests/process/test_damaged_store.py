"""A data folder damaged under a running server: every put still stores a sound copy.

Real server and bridge processes, real files changed behind the server's back:
a stored copy with a flipped content byte (header intact), directories, FIFOs,
sockets and symlinks where blob files belong, deleted tmp/ and shard folders,
shard and tmp/ folders replaced by plain files, a read-only tmp/ (an OS error
the server does not expect), and a frozen file system that makes one group
commit take 1,500 puts at once. Each of these failed on the code before issue 10.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.canonical_json import canonicalize_text
from blobstore.client import BlobClient
from blobstore.errors import DataLoss
from blobstore.model import BlobType
from blobstore.retry import RetryPolicy
from tests.bridge_processes import Stack, stack
from tests.faults import EXIT_CORRUPT, check_blob_file, status_of, verify_cli
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB, blob_path, raw_stub, sha256_id, temp_files


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("damaged")) as started:
        yield started


@pytest.fixture(scope="module")
def direct(running: Stack) -> Iterator[BlobClient]:
    with BlobClient(running.server.target, timeout=30, retry=RetryPolicy.off()) as client:
        yield client


def _flip_last_byte(path: Path) -> None:
    """Silent corruption: one content byte changes, the header (and its CRC) stays valid."""
    with open(path, "r+b") as stored:
        stored.seek(-1, os.SEEK_END)
        last = stored.read(1)
        stored.seek(-1, os.SEEK_END)
        stored.write(bytes([last[0] ^ 0x01]))


def _quarantined(data_dir: Path, blob_id: str) -> list[Path]:
    return sorted((data_dir / "quarantine").glob(blob_id.removeprefix("sha256:") + ".*"))


def _assert_healed(stack: Stack, client: BlobClient, blob_id: str, content: bytes) -> None:
    """The put left a sound copy: it reads back, twice, and the bad one is in quarantine."""
    data_dir = stack.server.data_dir
    assert check_blob_file(blob_path(data_dir, blob_id)) == content
    assert client.get(blob_id).data == content
    assert client.get(blob_id).data == content
    assert len(_quarantined(data_dir, blob_id)) == 1


# -- 1. a re-put over a silently corrupted copy ------------------------------------------


def _stream_with_expected_id(content: bytes, blob_id: str) -> Iterator[pb.PutStreamRequest]:
    yield pb.PutStreamRequest(
        blob_type=pb.BLOB_TYPE_BINARY, total_size=len(content), expected_id=blob_id
    )
    for start in range(0, len(content), MiB):
        yield pb.PutStreamRequest(chunk=content[start : start + MiB])


@pytest.mark.parametrize(
    "road",
    ["unary_small", "unary_large", "stream", "stream_expected_id", "json_text_again"],
)
def test_reput_over_a_silently_corrupted_copy_stores_a_sound_one(
    running: Stack, direct: BlobClient, road: str
) -> None:
    """The bytes in hand (or the stream) are checked against the stored copy: never
    answered from a copy that does not match its id."""
    sizes = {"unary_small": 3000, "unary_large": 1 * MiB, "stream": 5 * MiB}
    if road == "json_text_again":
        text = b'{"road": "%s", "pad": "%s"}' % (road.encode(), os.urandom(8).hex().encode())
        content = canonicalize_text(text)
        blob_id = direct.put_json_text(text).info.blob_id
    else:
        content = os.urandom(sizes.get(road, 3 * MiB))
        blob_id = direct.put_bytes(content).info.blob_id
    assert blob_id == sha256_id(content)
    _flip_last_byte(blob_path(running.server.data_dir, blob_id))

    if road == "json_text_again":
        again = direct.put_json_text(text)  # the same text: remembered by the store
        assert again.info.blob_id == blob_id
    elif road == "stream_expected_id":
        with raw_stub(running.server.target) as stub:
            reply = stub.PutStream(_stream_with_expected_id(content, blob_id), timeout=60)
        assert reply.id == blob_id and reply.size == len(content)
    else:
        assert direct.put_bytes(content).info.blob_id == blob_id
    _assert_healed(running, direct, blob_id, content)


@pytest.mark.parametrize("blob_type", ["Json", "Binary"])
def test_bridge_reput_over_a_silently_corrupted_copy_stores_a_sound_one(
    running: Stack, direct: BlobClient, blob_type: str
) -> None:
    if blob_type == "Json":
        data: object = {"bridge": os.urandom(8).hex(), "n": [1, 2, 3]}
    else:
        data = base64.b64encode(os.urandom(2000)).decode()
    params = {"data": data, "blob_type": blob_type}
    blob_id = running.http.result("blobs/put", params)["blob_id"]
    _flip_last_byte(blob_path(running.server.data_dir, blob_id))

    assert running.http.result("blobs/put", params)["blob_id"] == blob_id
    got = running.http.result("blobs/get", {"blob_id": blob_id})
    assert got["data"] == data
    content = check_blob_file(blob_path(running.server.data_dir, blob_id))
    _assert_healed(running, direct, blob_id, content)


@pytest.mark.parametrize("size", [0, 3000, 1 * MiB, 5 * MiB])
def test_reput_of_a_sound_copy_is_answered_from_it(
    running: Stack, direct: BlobClient, size: int
) -> None:
    """The comparison finds sound copies sound: created false, nothing quarantined."""
    content = os.urandom(size)
    blob_id = sha256_id(content)
    direct.put_bytes(content)
    with raw_stub(running.server.target) as stub:
        streamed = stub.PutStream(iter([pb.PutStreamRequest(chunk=content)]), timeout=60)
        early = stub.PutStream(_stream_with_expected_id(content, blob_id), timeout=60)
    assert (streamed.id, streamed.created) == (blob_id, False)
    assert (early.id, early.created) == (blob_id, False)
    assert direct.put_bytes(content).created is False
    assert _quarantined(running.server.data_dir, blob_id) == []
    assert direct.get(blob_id).data == content


def test_reads_of_a_corrupted_copy_still_quarantine_it(running: Stack, direct: BlobClient) -> None:
    """Unchanged promise: a get of a bad copy is DATA_LOSS, then NOT_FOUND, never bad data."""
    content = os.urandom(5000)
    blob_id = direct.put_bytes(content).info.blob_id
    _flip_last_byte(blob_path(running.server.data_dir, blob_id))
    with pytest.raises(DataLoss):
        direct.get(blob_id)
    assert direct.stat(blob_id) is None
    assert direct.put_bytes(content).created
    assert direct.get(blob_id).data == content


# -- 3. something that is not a regular file where a blob file belongs ---------------------


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
    running: Stack, direct: BlobClient, kind: str, tmp_path: Path
) -> None:
    data_dir = running.server.data_dir
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
        with raw_stub(running.server.target) as stub:
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
    running: Stack, direct: BlobClient, kind: str, tmp_path: Path
) -> None:
    """No read first: the put itself meets the odd file (unary small and streamed)."""
    data_dir = running.server.data_dir
    for content in (os.urandom(2000), os.urandom(5 * MiB)):
        blob_id = sha256_id(content)
        path = blob_path(data_dir, blob_id)
        listener = _make_odd_file(path, kind, tmp_path)
        try:
            with raw_stub(running.server.target) as stub:
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
    server = start_server()
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


# -- 4. deleted folders -------------------------------------------------------------------


def test_deleted_tmp_and_shard_folders_are_made_again(running: Stack, direct: BlobClient) -> None:
    data_dir = running.server.data_dir
    contents = [os.urandom(3000), os.urandom(1 * MiB), os.urandom(5 * MiB)]  # every road
    for round_ in range(2):
        shutil.rmtree(data_dir / "tmp")
        for content in contents:
            shard = blob_path(data_dir, sha256_id(content)).parent
            if shard.exists():
                shutil.rmtree(shard)
        for content in contents:
            reply = direct.put_bytes(content)
            assert reply.created, round_
            assert direct.get(reply.info.blob_id).data == content
            assert check_blob_file(blob_path(data_dir, reply.info.blob_id)) == content
        document = {"round": round_, "pad": os.urandom(4).hex()}
        assert direct.put_json(document).created
        assert (data_dir / "tmp").is_dir()
    assert temp_files(data_dir) == []
    # quarantine/ too: the next bad copy found makes it again and goes there.
    shutil.rmtree(data_dir / "quarantine")
    blob_id = sha256_id(contents[0])
    _flip_last_byte(blob_path(data_dir, blob_id))
    with pytest.raises(DataLoss):
        direct.get(blob_id)
    assert len(_quarantined(data_dir, blob_id)) == 1


def test_folders_replaced_by_plain_files_are_moved_aside_and_made_again(
    running: Stack, direct: BlobClient
) -> None:
    """A shard (or tmp/) that is a plain file holds no blob: reads say NOT_FOUND, the next
    put moves the file to quarantine/ and makes the folder again, and so does verify."""
    data_dir = running.server.data_dir
    content = os.urandom(3000)
    blob_id = sha256_id(content)
    shard = blob_path(data_dir, blob_id).parent
    shutil.rmtree(shard)
    shard.write_bytes(b"not a folder")
    with raw_stub(running.server.target) as stub:
        with pytest.raises(grpc.RpcError) as failed:
            stub.Get(pb.GetRequest(id=blob_id), timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        missing = stub.FindMissing(pb.FindMissingRequest(ids=[blob_id]), timeout=10)
        assert list(missing.missing_ids) == [blob_id]
    assert direct.put_bytes(content).created
    assert shard.is_dir() and direct.get(blob_id).data == content
    aside = sorted((data_dir / "quarantine").glob(f"not-a-folder-blobs-{shard.name}.*"))
    assert [path.read_bytes() for path in aside] == [b"not a folder"]

    shutil.rmtree(data_dir / "tmp")
    (data_dir / "tmp").write_bytes(b"not a folder either")
    big = os.urandom(5 * MiB)
    assert direct.put_bytes(big).created  # a streamed put: a named temp file in tmp/
    assert (data_dir / "tmp").is_dir()
    assert direct.get(sha256_id(big)).data == big


def test_verify_moves_a_plain_file_out_of_a_shards_place(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with BlobClient(server.target, timeout=30) as client:
        kept = client.put_bytes(os.urandom(1000)).info.blob_id
    shard = blob_path(server.data_dir, sha256_id(b"elsewhere")).parent
    if shard == blob_path(server.data_dir, kept).parent:  # 1 in 256: keep the stored one
        shard = server.data_dir / "blobs" / ("00" if shard.name != "00" else "01")
    shutil.rmtree(shard)
    shard.write_bytes(b"x")
    checked = verify_cli(server.data_dir, "--no-quarantine")
    assert checked.returncode == EXIT_CORRUPT, checked.stdout + checked.stderr
    assert "not a shard folder" in checked.stdout and shard.is_file()
    done = verify_cli(server.data_dir)
    assert done.returncode == EXIT_CORRUPT and shard.is_dir(), done.stdout + done.stderr
    again = verify_cli(server.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    with BlobClient(server.target, timeout=30) as client:
        assert client.stat(kept) is not None


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Bind-mounts `folder` read-only over itself (root only; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8)")
    done = subprocess.run(
        ["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True
        )
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_unexpected_os_error_is_logged_with_its_errno(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A read-only tmp/: puts fail UNAVAILABLE (EROFS) by every road, and the log says
    which error, by name and number, once (repeats are counted, not written again)."""
    server = start_server()
    with BlobClient(server.target, timeout=30, retry=RetryPolicy.off()) as client:
        client.put_bytes(b"before")
        with _read_only(server.data_dir / "tmp"):
            for content in (os.urandom(100), os.urandom(1 * MiB), os.urandom(5 * MiB)):
                with pytest.raises(Exception, match="Read-only file system"):
                    client.put_bytes(content)
        assert client.put_bytes(os.urandom(100)).created  # fine again once it is writable
    lines = [line for line in server.log().splitlines() if "EROFS" in line]
    assert len(lines) == 1, server.log()
    assert "I/O error EROFS (errno 30) while trying to create a temporary file" in lines[0]
    assert "Traceback" not in server.log()


# -- 2. a group commit of more puts than one writev takes ---------------------------------


@pytest.fixture
def freezable_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB ext4 on a loop device; skipped where that cannot be mounted (not root)."""
    if os.geteuid() != 0 or shutil.which("fsfreeze") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root, fsfreeze(8) and mkfs.ext4(8)")
    image, mount = tmp_path / "fs.img", tmp_path / "fs"
    mount.mkdir()
    with open(image, "wb") as sparse:
        sparse.truncate(256 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    done = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mount)], check=False)


PUTS = 1500
"""Far past the 341 puts of 1024 iovecs (three per journal record) that one writev takes."""


def _fsfreeze(flag: str, mount: Path) -> None:
    subprocess.run(["fsfreeze", flag, str(mount)], check=True, timeout=60)


async def _frozen_burst(server: ServerProcess, mount: Path) -> list[str]:
    contents = [os.urandom(1024) for _ in range(PUTS)]
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        await stub.Put(pb.PutRequest(data=b"warm"), timeout=30)
        # A frozen file system stops the committer's write: every put queues behind it,
        # as behind a slow fdatasync under other write load.
        await asyncio.to_thread(_fsfreeze, "-f", mount)
        try:
            calls = [stub.Put(pb.PutRequest(data=content), timeout=120) for content in contents]
            probe = pb.StatRequest(id=sha256_id(b"probe"))

            async def all_admitted() -> bool:
                try:
                    await stub.Stat(probe, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

            refusals = 0
            for _ in range(3000):  # until the cap refuses: every put reached the store
                refusals = refusals + 1 if await all_admitted() else 0
                if refusals >= 5:
                    break
                await asyncio.sleep(0.01)
            assert refusals >= 5, "the puts never filled the concurrency cap"
        finally:
            await asyncio.to_thread(_fsfreeze, "-u", mount)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        ids = []
        for content, outcome in zip(contents, outcomes, strict=True):
            if isinstance(outcome, grpc.aio.AioRpcError) and status_of(outcome)[1] == "OVERLOADED":
                # A put that arrived while a probe held a slot: refused at once, as promised;
                # it says nothing about the batch, so it is simply sent again.
                outcome = await stub.Put(pb.PutRequest(data=content), timeout=120)
            assert isinstance(outcome, pb.PutResponse), f"a put failed: {outcome}"
            ids.append(outcome.id)
    assert ids == [sha256_id(content) for content in contents]
    return ids


def test_a_group_commit_of_1500_puts_succeeds(
    freezable_fs: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server("--max-concurrent-rpcs", str(PUTS), data_dir=freezable_fs / "data")
    ids = asyncio.run(_frozen_burst(server, freezable_fs))
    with BlobClient(server.target, timeout=30) as client:
        for blob_id in ids[:: PUTS // 50]:
            assert client.get(blob_id).info.blob_type is BlobType.BINARY
    # ...and after kill -9 the journal brings back every one of them.
    server.kill()
    again = ServerProcess(server.data_dir, server.log_path.with_suffix(".2.log")).start()
    try:
        with BlobClient(again.target, timeout=30) as client:
            assert all(client.stat(blob_id) is not None for blob_id in ids)
    finally:
        again.kill()
    assert "Traceback" not in server.log()
