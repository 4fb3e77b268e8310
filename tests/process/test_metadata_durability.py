"""A blob's type and metadata (Flow, file name, content type) are as durable as its content.

They survive a restart and kill -9, come back from journal records whose blob files
never reached the disk (crash replay), are checked by `blobstore verify`, and blob
files written before metadata existed are still served.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from blobstore.errors import DataLoss
from blobstore.model import NO_METADATA, BlobMetadata, BlobType
from blobstore.storage.journal import encode_record
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id

ServerFactory = Callable[..., ServerProcess]
MiB = 1024 * 1024


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobstore.cli", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# (content, type, metadata): small (group commit), unary with its own fsync, streamed.
BLOBS = [
    (b'{"steps":[]}', BlobType.FLOW, BlobMetadata("small.flow.json")),
    (b"small binary", BlobType.BINARY, BlobMetadata("note.txt", "text/plain")),
    (os.urandom(200_000), BlobType.BINARY, BlobMetadata(content_type="image/png")),
    (os.urandom(5 * MiB), BlobType.BINARY, BlobMetadata("big.iso", "application/x-iso9660")),
    (b'{"big":' + b"1" * 100 + b"}", BlobType.JSON, BlobMetadata("json.json")),
]


def put_all(client: BlobClient) -> list[str]:
    ids: list[str] = []
    for content, blob_type, metadata in BLOBS:
        result = client.put_bytes(content, blob_type, metadata)
        assert result.created and result.info.metadata == metadata
        ids.append(result.info.blob_id)
    return ids


def check_all(client: BlobClient, ids: list[str], tmp_path: Path) -> None:
    for blob_id, (content, blob_type, metadata) in zip(ids, BLOBS, strict=True):
        stat = client.stat(blob_id)
        assert stat is not None and (stat.blob_type, stat.metadata) == (blob_type, metadata)
        blob = client.get(blob_id)
        assert (blob.info.blob_type, blob.info.metadata) == (blob_type, metadata)
        if blob_type is BlobType.BINARY:
            assert blob.data == content
        streamed = client.get_to_file(blob_id, tmp_path / "streamed")
        assert streamed.metadata == metadata


@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_type_and_metadata_survive_a_restart(
    start_server: ServerFactory, tmp_path: Path, how: str
) -> None:
    server = start_server()
    with BlobClient(server.target) as client:
        ids = put_all(client)
    if how == "stop":
        server.stop()
    else:
        server.kill()
    again = start_server(data_dir=server.data_dir)
    with BlobClient(again.target) as client:
        check_all(client, ids, tmp_path)
    assert verify(server.data_dir).returncode == 0


def test_replay_restores_type_and_metadata_from_the_journal(start_server: ServerFactory) -> None:
    first = start_server()
    first.stop()
    data_dir = first.data_dir
    records = [
        (b'{"a flow":"never filed"}', BlobType.FLOW, BlobMetadata("lost.flow.json")),
        (b"binary never filed", BlobType.BINARY, BlobMetadata("lost.bin", "x/y")),
        (b"plain, no metadata", BlobType.BINARY, NO_METADATA),
    ]
    journal = data_dir / "journal"
    journal.mkdir(exist_ok=True)
    (journal / "0000000000000003.log").write_bytes(
        b"".join(
            b"".join(encode_record(hashlib.sha256(data).digest(), blob_type, data, metadata))
            for data, blob_type, metadata in records
        )
    )
    server = start_server(data_dir=data_dir)
    assert "3 blob(s) checked, 3 restored" in server.log()
    with BlobClient(server.target) as client:
        for data, blob_type, metadata in records:
            blob = client.get(sha256_id(data))
            assert (blob.data, blob.info.blob_type, blob.info.metadata) == (
                data,
                blob_type,
                metadata,
            )


def test_a_blob_file_of_the_old_format_is_still_served(start_server: ServerFactory) -> None:
    first = start_server()
    first.stop()
    content = b"written by a server from before metadata"
    # The version 1 file, byte for byte as those servers wrote it.
    head = b"CAB1B\x00\x00\x00" + struct.pack(">Q", len(content))
    path = blob_path(first.data_dir, sha256_id(content))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + struct.pack(">I", zlib.crc32(head)) + content)
    assert verify(first.data_dir).returncode == 0
    server = start_server(data_dir=first.data_dir)
    with BlobClient(server.target) as client:
        blob = client.get(sha256_id(content))
        assert (blob.data, blob.info.blob_type, blob.info.metadata) == (
            content,
            BlobType.BINARY,
            NO_METADATA,
        )
        # A put of the same content with metadata finds it stored: the first writer wins.
        again = client.put_bytes(content, BlobType.BINARY, BlobMetadata("late.bin"))
        assert not again.created and again.info.metadata == NO_METADATA


def test_verify_and_reads_catch_a_damaged_trailer(start_server: ServerFactory) -> None:
    server = start_server("--journal-max-blob-bytes", "0")
    content = b"content whose name gets damaged"
    with BlobClient(server.target) as client:
        blob_id = client.put_bytes(content, BlobType.BINARY, BlobMetadata("name.txt")).info.blob_id
    path = blob_path(server.data_dir, blob_id)
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"name.txt")] ^= 0x01  # inside the file name, not the content
    path.write_bytes(bytes(raw))
    report = verify(server.data_dir)
    assert report.returncode == 4, report.stdout + report.stderr
    assert "metadata checksum mismatch" in report.stdout + report.stderr
    server.stop()
    # verify quarantined it; put it back damaged to see a read refuse it too.
    path.write_bytes(bytes(raw))
    again = start_server(data_dir=server.data_dir)
    with BlobClient(again.target) as client, pytest.raises(DataLoss):
        client.get(blob_id)
