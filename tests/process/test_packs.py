"""The pack store of small blobs (`--small-blob-store packs`) under attack: damaged records,
torn tails, removals across restarts, compaction. (The kill -9 storms, the contract suite
and the delete/eviction crash tests run with packs too, parametrised beside files.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import BlobClient
from blobstore.ids import BlobId
from blobstore.model import BlobType
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.filesystem.journal import encode_record
from blobstore.storage.verifying import VerifyingBackend
from tests.faults import flip_byte, pack_record
from tests.processes import ServerProcess
from tests.rpc_helpers import raw_stub, rpc_failure, sha256_id, wait_until

ServerFactory = Callable[..., ServerProcess]
PACKS = ("--small-blob-store", "packs")


def quarantined(data_dir: Path, blob_id: str) -> list[Path]:
    prefix = blob_id.removeprefix("sha256:")
    return sorted(p for p in (data_dir / "quarantine").iterdir() if p.name.startswith(prefix))


def get_code(server: ServerProcess, blob_id: str) -> grpc.StatusCode:
    with raw_stub(server.target) as stub:
        return rpc_failure(lambda: stub.Get(pb.GetRequest(id=blob_id))).code()


def put_each(server: ServerProcess, blobs: list[bytes]) -> list[str]:
    with BlobClient(server.target) as client:
        return [client.put_bytes(blob).info.blob_id for blob in blobs]


def test_small_puts_go_to_packs_not_files(start_server: ServerFactory) -> None:
    server = start_server(*PACKS)
    ids = put_each(server, [os.urandom(3000) for _ in range(20)])
    data_dir = server.data_dir
    assert list((data_dir / "packs").glob("*.pack"))
    assert [p for p in (data_dir / "blobs").glob("*/*")] == []
    assert list((data_dir / "journal").glob("*.log")) == []
    with BlobClient(server.target) as client:
        big = client.put_bytes(os.urandom(200_000)).info.blob_id  # over the journal's size
        assert client.find_missing([*ids, big]) == []
    assert len(list((data_dir / "blobs").glob("*/*"))) == 1


def test_flipped_byte_in_a_record_is_data_loss_then_quarantined_and_stays_gone(
    start_server: ServerFactory,
) -> None:
    server = start_server(*PACKS)
    data = os.urandom(5000)
    other = os.urandom(5000)
    blob_id, other_id = put_each(server, [data, other])
    found = pack_record(server.data_dir, blob_id)
    assert found is not None
    path, offset, length = found
    flip_byte(path, offset + 56 + 100)  # in the content
    assert get_code(server, blob_id) == grpc.StatusCode.DATA_LOSS
    (moved,) = quarantined(server.data_dir, blob_id)
    assert moved.stat().st_size == length - 40  # the record's blob file part, kept as a file
    assert get_code(server, blob_id) == grpc.StatusCode.NOT_FOUND
    server.kill()
    again = start_server(*PACKS, data_dir=server.data_dir)
    assert get_code(again, blob_id) == grpc.StatusCode.NOT_FOUND  # the tombstone holds
    with BlobClient(again.target) as client:
        assert client.get(other_id).data == other
        assert client.put_bytes(data).created  # heals
        assert client.get(blob_id).data == data
    again.kill()
    third = start_server(*PACKS, data_dir=server.data_dir)
    with BlobClient(third.target) as client:
        assert client.get(blob_id).data == data  # the put after the tombstone wins


def test_a_record_damaged_while_the_server_was_down_is_never_served(
    start_server: ServerFactory,
) -> None:
    server = start_server(*PACKS)
    data = os.urandom(4000)
    (blob_id,) = put_each(server, [data])
    server.stop()
    found = pack_record(server.data_dir, blob_id)
    assert found is not None
    flip_byte(found[0], found[1] + found[2] - 5)  # the content's last byte: the CRC fails
    again = start_server(*PACKS, data_dir=server.data_dir)
    assert get_code(again, blob_id) == grpc.StatusCode.DATA_LOSS
    assert len(quarantined(again.data_dir, blob_id)) == 1
    with BlobClient(again.target) as client:
        assert client.put_bytes(data).created
        assert client.get(blob_id).data == data


def test_a_torn_tail_is_cut_back_and_loses_only_the_unacknowledged_record(
    start_server: ServerFactory,
) -> None:
    server = start_server(*PACKS)
    blobs = [os.urandom(3000) for _ in range(5)]
    ids = put_each(server, blobs)
    server.kill()
    (segment,) = sorted((server.data_dir / "packs").glob("*.pack"))
    whole = segment.stat().st_size
    torn = os.urandom(3000)
    record = b"".join(encode_record(bytes.fromhex(sha256_id(torn)[7:]), BlobType.BINARY, torn))
    with open(segment, "ab") as file:
        file.write(record[: len(record) // 2])  # the append a crash interrupted
    again = start_server(*PACKS, data_dir=server.data_dir)
    assert "cut back a torn tail" in again.log()
    assert segment.stat().st_size == whole
    assert list((again.data_dir / "quarantine").iterdir()) == []  # debris, not damage
    with BlobClient(again.target) as client:
        assert [client.get(i).data for i in ids] == blobs
        assert client.find_missing([sha256_id(torn)]) == [sha256_id(torn)]


def test_garbage_after_the_last_record_is_cut_back_and_kept(start_server: ServerFactory) -> None:
    server = start_server(*PACKS)
    blobs = [os.urandom(3000) for _ in range(3)]
    ids = put_each(server, blobs)
    server.kill()
    (segment,) = sorted((server.data_dir / "packs").glob("*.pack"))
    whole = segment.stat().st_size
    with open(segment, "ab") as file:
        file.write(b"\0" * 4096)  # not an entry cut short: damage (or a file system's zeros)
    again = start_server(*PACKS, data_dir=server.data_dir)
    assert segment.stat().st_size == whole
    (kept,) = (again.data_dir / "quarantine").iterdir()
    assert kept.name.startswith("pack-tail-") and kept.read_bytes() == b"\0" * 4096
    with BlobClient(again.target) as client:
        assert [client.get(i).data for i in ids] == blobs


def test_a_broken_header_mid_segment_loses_only_that_record(start_server: ServerFactory) -> None:
    server = start_server(*PACKS)
    blobs = [os.urandom(3000) for _ in range(3)]
    ids = put_each(server, blobs)  # one commit each: three records in a row
    server.kill()
    found = pack_record(server.data_dir, ids[1])
    assert found is not None
    flip_byte(found[0], found[1] + 36 + 5)  # the blob file header: its CRC fails
    again = start_server(*PACKS, data_dir=server.data_dir)
    assert "are no record (damaged); skipped" in again.log()
    with BlobClient(again.target) as client:
        assert client.get(ids[0]).data == blobs[0]
        assert client.get(ids[2]).data == blobs[2]
        assert client.find_missing([ids[1]]) == [ids[1]]


def test_deleted_blobs_stay_deleted_after_kill_and_a_files_setting(
    start_server: ServerFactory,
) -> None:
    server = start_server(*PACKS)
    blobs = [os.urandom(2000) for _ in range(30)]
    ids = put_each(server, blobs)
    with BlobClient(server.target) as client:
        assert client.delete(ids[:10]) == ids[:10]
    server.kill()
    # A folder that holds packs keeps using them, whatever the setting says.
    again = start_server(data_dir=server.data_dir)
    assert "holds pack segments" in again.log()
    with BlobClient(again.target) as client:
        assert client.find_missing(ids) == ids[:10]
        assert [client.get(i).data for i in ids[10:]] == blobs[10:]


def test_index_files_spare_the_scan_and_a_bad_one_is_not_believed(
    start_server: ServerFactory,
) -> None:
    server = start_server(*PACKS)
    blobs = [os.urandom(2000) for _ in range(20)]
    ids = put_each(server, blobs)
    with BlobClient(server.target) as client:
        client.delete(ids[:5])
    server.stop()
    again = start_server(*PACKS, data_dir=server.data_dir)  # reads the segment, indexes it
    assert "(0 from their index files)" in again.log()
    again.stop()
    (index,) = (server.data_dir / "packs").glob("*.idx")
    third = start_server(*PACKS, data_dir=server.data_dir)
    assert "(1 from their index files)" in third.log()
    with BlobClient(third.target) as client:
        assert client.find_missing(ids) == ids[:5]  # the tombstones are in the index file too
    third.stop()
    flip_byte(index, 20)  # a torn or damaged index file: its CRC fails
    fourth = start_server(*PACKS, data_dir=server.data_dir)
    assert "(0 from their index files)" in fourth.log()
    with BlobClient(fourth.target) as client:
        assert client.find_missing(ids) == ids[:5]
        assert [client.get(i).data for i in ids[5:]] == blobs[5:]


async def _small_segments(
    folder: Path, count: int
) -> tuple[FileSystemBackend, list[bytes], list[BlobId]]:
    """An open packs backend with 16 KiB segments holding `count` new 1000-byte blobs."""
    backend = FileSystemBackend(
        folder, io_threads=4, small_blob_store="packs", journal_segment_bytes=16 * 1024
    )
    backend.open()
    blobs = [os.urandom(1000) for _ in range(count)]
    ids = [sha256_id(b) for b in blobs]
    try:
        for blob_id, blob in zip(ids, blobs, strict=True):
            await backend.put(blob_id, BlobType.BINARY, blob)
    except BaseException:
        backend.close()
        raise
    return backend, blobs, ids


async def test_compaction_drops_dead_segments_and_a_restart_keeps_the_rest(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "data"
    backend, blobs, ids = await _small_segments(folder, 300)
    try:
        written = len(list((folder / "packs").glob("*.pack")))
        assert written > 10
        keep = set(ids[::4])
        assert len(await backend.delete([i for i in ids if i not in keep])) == 300 - len(keep)

        def compacted() -> bool:
            return len(list((folder / "packs").glob("*.pack"))) <= written // 2

        assert wait_until(compacted, timeout=30)
        packs = {p.stem for p in (folder / "packs").glob("*.pack")}
        assert {p.stem for p in (folder / "packs").glob("*.idx")} <= packs
    finally:
        backend.close()
    reopened = FileSystemBackend(folder, io_threads=4, small_blob_store="packs")
    reopened.open()
    try:
        assert set(await reopened.find_missing(ids)) == set(ids) - keep
        verified = VerifyingBackend(reopened)
        for blob_id, blob in zip(ids, blobs, strict=True):
            if blob_id in keep:
                assert (await verified.get(blob_id)).data == blob
    finally:
        reopened.close()


@pytest.mark.parametrize("option", ["--storage", "--small-blob-store"])
def test_the_setting_is_checked(start_server: ServerFactory, tmp_path: Path, option: str) -> None:
    value = f"file://{tmp_path}/d?small=piles" if option == "--storage" else "piles"
    with pytest.raises(RuntimeError, match="piles"):
        start_server(option, value)


def _verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "blobstore.cli", "verify", "-q", "--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_verify_reads_the_packs_and_quarantines_only_without_a_server(
    start_server: ServerFactory,
) -> None:
    server = start_server(*PACKS)
    blobs = [os.urandom(3000) for _ in range(10)]
    ids = put_each(server, blobs)
    found = pack_record(server.data_dir, ids[3])
    assert found is not None
    flip_byte(found[0], found[1] + 56 + 7)
    running = _verify(server.data_dir)
    assert running.returncode == 4, running.stderr
    assert f"BAD {ids[3]}" in running.stdout and "left: a running server" in running.stdout
    assert "checked 9 blob(s)" in running.stdout
    server.stop()
    alone = _verify(server.data_dir)
    assert alone.returncode == 4 and "moved to" in alone.stdout
    assert len(quarantined(server.data_dir, ids[3])) == 1
    assert _verify(server.data_dir).returncode == 0  # the tombstone: nothing bad left
    again = start_server(*PACKS, data_dir=server.data_dir)
    assert get_code(again, ids[3]) == grpc.StatusCode.NOT_FOUND
    with BlobClient(again.target) as client:
        assert [client.get(i).data for i in ids if i != ids[3]] == blobs[:3] + blobs[4:]


async def test_compaction_takes_a_record_damaged_since_it_was_indexed_out_of_service(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "data"
    backend, _blobs, ids = await _small_segments(folder, 60)
    try:
        found = pack_record(folder, ids[0])
        assert found is not None and found[0].name == "0000000000000000.pack"
        flip_byte(found[0], found[1] + 36 + 3)  # its header: the compaction scan skips it
        await backend.delete(ids[1:])

        def dropped() -> bool:
            return not found[0].exists()

        assert wait_until(dropped, timeout=30)
        assert [p for p in (folder / "quarantine").iterdir() if p.name.startswith(ids[0][7:])]
        assert await backend.find_missing(ids[:1]) == ids[:1]
    finally:
        backend.close()
