"""Group commit: small puts made durable by the journal, and what a crash leaves of it.

A power cut can leave journal records whose blob files never reached the disk
(they are written without an fsync of their own). Those states are built
here on disk with the journal's own record format, and a real server must
restore every blob from them before it serves; a torn or damaged record
ends what is replayed and the segment is kept in quarantine/. kill -9 in
the middle of a storm of small puts is done for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from blobstore.errors import BlobNotFound
from blobstore.ids import blob_id_from_digest
from blobstore.model import BlobType
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.filesystem.blob_file import encode_header
from blobstore.storage.filesystem.journal import encode_record, read_segment
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_file_problem, blob_files, blob_path, sha256_id, wait_until
from tests.storm import Turn, storm_until_killed

ServerFactory = Callable[..., ServerProcess]


def digest_of(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def write_segment(data_dir: Path, name: str, blobs: list[bytes], tail: bytes = b"") -> Path:
    """A journal segment as a crash would leave it, holding `blobs` then `tail`."""
    journal = data_dir / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    path = journal / name
    records = b"".join(
        b"".join(encode_record(digest_of(data), BlobType.BINARY, data)) for data in blobs
    )
    path.write_bytes(records + tail)
    return path


def prepared_data_dir(start_server: ServerFactory) -> Path:
    """A data folder laid out by a real server, which is then stopped cleanly."""
    first = start_server()
    first.stop()
    return first.data_dir


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "journal").glob("*.log"))


def test_small_puts_go_through_the_journal(start_server: ServerFactory) -> None:
    server = start_server()
    data = b"small and durable"
    with BlobClient(server.target) as client:
        assert client.put_bytes(data).info.blob_id == sha256_id(data)
    [segment] = segments(server.data_dir)
    [record] = read_segment(segment).records
    assert (record.digest, record.blob_type, record.data) == (
        digest_of(data),
        BlobType.BINARY,
        data,
    )
    assert blob_file_problem(blob_path(server.data_dir, sha256_id(data))) is None
    server.stop()
    # A clean stop checkpoints: the blobs are synced, the journal is empty.
    assert segments(server.data_dir) == []


def test_journal_can_be_switched_off(start_server: ServerFactory) -> None:
    server = start_server("--journal-max-blob-bytes", "0")
    with BlobClient(server.target) as client:
        client.put_bytes(b"synced on its own")
    assert segments(server.data_dir) == []
    assert blob_file_problem(blob_path(server.data_dir, sha256_id(b"synced on its own"))) is None


def test_blobs_over_the_journal_limit_sync_their_own_files(start_server: ServerFactory) -> None:
    server = start_server("--journal-max-blob-bytes", "100")
    small, large = b"s" * 100, b"L" * 101
    with BlobClient(server.target) as client:
        client.put_bytes(small)
        client.put_bytes(large)
    [segment] = segments(server.data_dir)
    assert [r.data for r in read_segment(segment).records] == [small]


def test_replay_restores_blobs_whose_files_never_reached_the_disk(
    start_server: ServerFactory,
) -> None:
    data_dir = prepared_data_dir(start_server)
    blobs = [os.urandom(n) for n in (0, 1, 1000, 65536)]
    write_segment(data_dir, "0000000000000007.log", blobs[:2])
    write_segment(data_dir, "0000000000000008.log", blobs[2:])
    verify = subprocess.run(
        [sys.executable, "-m", "blobstore.cli", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "journal: 2 segment(s) of small puts not yet checkpointed" in verify.stdout
    server = start_server(data_dir=data_dir)
    assert "replayed 2 journal segment(s): 4 blob(s) checked, 4 restored" in server.log()
    assert segments(data_dir) == []
    with BlobClient(server.target) as client:
        for data in blobs:
            blob = client.get(sha256_id(data))
            assert (blob.data, blob.info.blob_type) == (data, BlobType.BINARY)


def test_replay_replaces_a_broken_file_and_keeps_sound_ones(start_server: ServerFactory) -> None:
    data_dir = prepared_data_dir(start_server)
    sound, broken = b"filed before the crash", b"half written when the power went"
    for data in (sound, broken):
        path = blob_path(data_dir, sha256_id(data))
        path.write_bytes(encode_header(BlobType.BINARY, len(data)) + data)
    truncated = blob_path(data_dir, sha256_id(broken))
    truncated.write_bytes(truncated.read_bytes()[:-5])
    write_segment(data_dir, "0000000000000000.log", [sound, broken])
    server = start_server(data_dir=data_dir)
    assert "2 blob(s) checked, 1 restored" in server.log()
    assert blob_file_problem(truncated) is None
    assert len(list((data_dir / "quarantine").iterdir())) == 1
    with BlobClient(server.target) as client:
        assert client.get(sha256_id(broken)).data == broken
        assert client.get(sha256_id(sound)).data == sound


@pytest.mark.parametrize(
    "damage",
    ["torn tail", "flipped byte in the middle"],
)
def test_replay_stops_at_a_damaged_record_and_keeps_the_segment(
    start_server: ServerFactory, damage: str
) -> None:
    data_dir = prepared_data_dir(start_server)
    first, second, third = b"first record", b"second record", b"third record"
    if damage == "torn tail":
        last = b"".join(encode_record(digest_of(third), BlobType.BINARY, third))
        segment = write_segment(data_dir, "0000000000000000.log", [first, second], last[:-3])
        readable = [first, second]
    else:
        segment = write_segment(data_dir, "0000000000000000.log", [first, second, third])
        raw = bytearray(segment.read_bytes())
        raw[len(raw) // 2] ^= 0x40  # inside the second record
        segment.write_bytes(bytes(raw))
        readable = [first]
    original = segment.read_bytes()
    server = start_server(data_dir=data_dir)
    assert "are cut short or broken and were not replayed" in server.log()
    kept = [p for p in (data_dir / "quarantine").iterdir() if p.name.startswith("journal-")]
    assert len(kept) == 1 and kept[0].read_bytes() == original
    assert segments(data_dir) == []
    with BlobClient(server.target) as client:
        for data in readable:
            assert client.get(sha256_id(data)).data == data
        for data in (first, second, third):
            if data not in readable:
                with pytest.raises(BlobNotFound):
                    client.get(sha256_id(data))


async def test_concurrent_puts_of_one_blob_in_one_batch(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        data = b'{"same":"content"}'
        blob_id = blob_id_from_digest(hashlib.sha256(data).hexdigest())
        results = await asyncio.gather(
            *(backend.put(blob_id, BlobType.JSON, data) for _ in range(16))
        )
        assert sum(result.created for result in results) == 1
        assert {result.info.blob_id for result in results} == {blob_id}
        [segment] = segments(tmp_path / "data")
        assert {record.data for record in read_segment(segment).records} == {data}
        assert blob_files(tmp_path / "data") == [blob_path(tmp_path / "data", sha256_id(data))]
    finally:
        backend.close()


async def test_checkpoints_keep_the_journal_short(tmp_path: Path) -> None:
    """Filled segments are synced away while puts go on; the blobs outlive them."""
    data_dir = tmp_path / "data"
    backend = FileSystemBackend(data_dir, journal_segment_bytes=8 * 1024)
    backend.open()
    blobs = [os.urandom(1000) for _ in range(300)]
    try:
        for start in range(0, len(blobs), 30):
            batch = blobs[start : start + 30]
            await asyncio.gather(
                *(
                    backend.put(
                        blob_id_from_digest(hashlib.sha256(d).hexdigest()), BlobType.BINARY, d
                    )
                    for d in batch
                )
            )
        # About 37 segments were filled; all but the active one get checkpointed.
        assert wait_until(lambda: len(segments(data_dir)) <= 2, timeout=20)
    finally:
        backend.close()
    assert segments(data_dir) == []
    reopened = FileSystemBackend(data_dir)
    reopened.open()
    try:
        for data in blobs:
            blob = await reopened.get(blob_id_from_digest(hashlib.sha256(data).hexdigest()))
            assert blob.data == data
    finally:
        reopened.close()


# -- kill -9 while small puts are being committed ------------------------------------------


def _small_put_turn(client: BlobClient, turn: Turn) -> str:
    """One small put (JSON or bytes, in turn); logs the acknowledged id."""
    doc = {
        "seed": turn.seed,
        "worker": turn.worker,
        "i": turn.i,
        "pad": turn.rng.randbytes(200).hex(),
    }
    if turn.i % 2:
        return client.put_json(doc).info.blob_id
    return client.put_bytes(json.dumps(doc).encode()).info.blob_id


@pytest.mark.parametrize("small", ["files", "packs"])
def test_kill_9_during_group_commits_loses_nothing_acknowledged(
    start_server: ServerFactory, tmp_path: Path, small: str
) -> None:
    first = start_server("--small-blob-store", small)
    data_dir = first.data_dir
    acks = storm_until_killed(first, _small_put_turn, tmp_path, writers=8, enough=300, timeout=60)
    left = segments(data_dir)
    if small == "packs":  # the records are the blobs' home: no journal, no files
        assert left == [] and blob_files(data_dir) == []
        assert list((data_dir / "packs").glob("*.pack"))
    else:
        assert left, "a killed server leaves its journal for the next start"

    second = start_server("--small-blob-store", small, data_dir=data_dir)
    if small == "files":
        assert f"replayed {len(left)} journal segment(s)" in second.log()
    assert segments(data_dir) == []
    assert not list((data_dir / "quarantine").iterdir())
    assert [p for p in blob_files(data_dir) if blob_file_problem(p) is not None] == []
    with BlobClient(second.target, timeout=60) as client:
        missing = client.find_missing(acks)
        assert missing == []
        for blob_id in random.Random(0).sample(acks, min(200, len(acks))):
            assert sha256_id(client.get(blob_id).data) == blob_id
    print(f"{len(acks)} acknowledged small puts survived kill -9")
