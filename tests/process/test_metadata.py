"""Flow blobs and per-blob metadata through a real server process and its real data folder.

Every road a put takes to the disk carries the filename and content type: a small unary
put (group-committed through the journal), a larger unary put (its own fsynced file), a
streamed put (the writer). They come back from Get, Stat and GetStream, after a restart,
after kill -9 and journal replay of a put whose blob file the crash lost, and `blobstore
verify` checks files with metadata and quarantines one whose metadata block is damaged.
The CLI puts with --filename/--content-type and shows both on stat and get -o.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.errors import BlobNotFound, DataLoss
from blobstore.model import BlobMeta, BlobType
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, decode_header
from tests.faults import flip_byte
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id

ServerFactory = Callable[..., ServerProcess]
FLOW = {"schema": "https://stepflow.org/schemas/v1/flow.json", "name": "hello", "steps": []}
FLOW_TEXT = b'{"name":"hello","schema":"https://stepflow.org/schemas/v1/flow.json","steps":[]}'
PDF = BlobMeta("report 2024 \u00e9t\u00e9.pdf", "application/pdf")


def blobstore_cli(
    *args: str, target: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"BLOBSTORE_TARGET": target} if target else {})}
    return subprocess.run(
        [sys.executable, "-m", "blobstore.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def put_every_road(client: BlobClient, tmp_path: Path) -> dict[str, tuple[bytes, BlobMeta]]:
    """Puts one blob by each road to the disk; returns {id: (content, meta)}."""
    small = b"%PDF-1.7 small"
    large = os.urandom(200 * 1024)  # over the journal's 64 KiB: an fsynced file of its own
    streamed = os.urandom(3 * 1024 * 1024)
    source = tmp_path / "streamed.bin"
    source.write_bytes(streamed)
    stored: dict[str, tuple[bytes, BlobMeta]] = {
        client.put_bytes(small, meta=PDF).info.blob_id: (small, PDF),
        client.put_bytes(large, meta=BlobMeta("large.bin")).info.blob_id: (
            large,
            BlobMeta("large.bin"),
        ),
        client.put_file(source, meta=BlobMeta(None, "video/mp4")).info.blob_id: (
            streamed,
            BlobMeta(None, "video/mp4"),
        ),
        client.put_json(FLOW, BlobType.FLOW, meta=BlobMeta("flow.json")).info.blob_id: (
            FLOW_TEXT,
            BlobMeta("flow.json"),
        ),
    }
    return stored


def check_stored(client: BlobClient, stored: dict[str, tuple[bytes, BlobMeta]]) -> None:
    for blob_id, (content, meta) in stored.items():
        blob = client.get(blob_id)
        assert (blob.data, blob.info.meta) == (content, meta)
        info = client.stat(blob_id)
        assert info is not None and info.meta == meta


def test_metadata_goes_every_road_and_survives_a_restart(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_server()
    with BlobClient(server.target) as client:
        stored = put_every_road(client, tmp_path)
        check_stored(client, stored)
        flow_id = sha256_id(FLOW_TEXT)
        assert client.get(flow_id).info.blob_type is BlobType.FLOW
        # GetStream's first message carries it too (get_to_file reads a stream).
        for blob_id, (content, meta) in stored.items():
            out = tmp_path / "out.bin"
            assert client.get_to_file(blob_id, out).meta == meta
            assert out.read_bytes() == content
    server.stop()
    again = start_server(data_dir=server.data_dir)
    with BlobClient(again.target) as client:
        check_stored(client, stored)


def test_grpc_messages_carry_flow_and_metadata(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        put = stub.Put(
            pb.PutRequest(
                blob_type=pb.BLOB_TYPE_FLOW,
                data=b'{"steps":[],"name":"x"}',
                filename="x.yaml",
                content_type="application/yaml",
            ),
            timeout=30,
        )
        assert (put.blob_type, put.filename, put.content_type, put.created) == (
            pb.BLOB_TYPE_FLOW,
            "x.yaml",
            "application/yaml",
            True,
        )
        again = stub.Put(
            pb.PutRequest(
                blob_type=pb.BLOB_TYPE_JSON,
                data=b'{"name":"x","steps":[]}',
                filename="renamed.json",
            ),
            timeout=30,
        )
        assert (again.created, again.blob_type, again.filename) == (
            False,
            pb.BLOB_TYPE_FLOW,
            "x.yaml",
        )
        got = stub.Get(pb.GetRequest(id=put.id, as_json_value=True), timeout=30)
        assert got.json.struct_value.fields["name"].string_value == "x"
        assert (got.blob_type, got.filename, got.content_type) == (
            pb.BLOB_TYPE_FLOW,
            "x.yaml",
            "application/yaml",
        )
        stat = stub.Stat(pb.StatRequest(id=put.id), timeout=30)
        assert (stat.filename, stat.content_type) == ("x.yaml", "application/yaml")
        bare = stub.Put(pb.PutRequest(data=b"no metadata"), timeout=30)
        assert not bare.HasField("filename") and not bare.HasField("content_type")
        # A json Value can be stored as a flow; not as binary.
        value_put = stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_FLOW, json=got.json), timeout=30)
        assert value_put.id == put.id
        with pytest.raises(grpc.RpcError) as refused:
            stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, json=got.json), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as bad_name:
            stub.Put(pb.PutRequest(data=b"x", filename="a\nb"), timeout=30)
        assert bad_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "control characters" in (bad_name.value.details() or "")


def test_metadata_in_a_later_stream_message_is_refused(server: ServerProcess) -> None:
    def messages() -> Iterator[pb.PutStreamRequest]:
        yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, chunk=b"first")
        yield pb.PutStreamRequest(chunk=b"second", filename="late.bin")

    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.BlobServiceStub(channel).PutStream(messages(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "belong in the first message only" in (refused.value.details() or "")


def test_kill_9_then_replay_restores_a_group_committed_put_with_its_metadata(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    data = b"acknowledged from the journal"
    with BlobClient(server.target) as client:
        blob_id = client.put_bytes(data, BlobType.BINARY, meta=PDF).info.blob_id
    server.kill()  # SIGKILL: no checkpoint, the journal segment stays
    # The power cut that would have lost the unsynced blob file: only the journal has it.
    blob_path(server.data_dir, blob_id).unlink()
    assert list((server.data_dir / "journal").glob("*.log"))
    again = start_server(data_dir=server.data_dir)
    assert "1 blob(s) checked, 1 restored" in again.log()
    with BlobClient(again.target) as client:
        blob = client.get(blob_id)
        assert (blob.data, blob.info.meta) == (data, PDF)


def test_verify_checks_metadata_and_quarantines_a_damaged_block(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_server()
    with BlobClient(server.target) as client:
        stored = put_every_road(client, tmp_path)
    server.stop()
    clean = blobstore_cli("verify", "--data-dir", str(server.data_dir))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"checked {len(stored)} blob(s)" in clean.stdout

    small_id = sha256_id(b"%PDF-1.7 small")
    path = blob_path(server.data_dir, small_id)
    header = decode_header(path.read_bytes()[:HEADER_SIZE])
    assert header.meta_size > 0
    flip_byte(path, HEADER_SIZE + header.size + 3)  # inside the filename
    damaged = blobstore_cli("verify", "--data-dir", str(server.data_dir))
    assert damaged.returncode == 4
    assert f"BAD {small_id}: metadata checksum mismatch" in damaged.stdout
    assert not path.exists()


def test_a_damaged_metadata_block_is_data_loss_on_read(server: ServerProcess) -> None:
    with BlobClient(server.target) as client:
        blob_id = client.put_bytes(b"read me", meta=BlobMeta("name.txt")).info.blob_id
        path = blob_path(server.data_dir, blob_id)
        flip_byte(path, path.stat().st_size - 1)  # the block's CRC
        with pytest.raises(DataLoss, match="metadata checksum mismatch"):
            client.stat(blob_id)
        with pytest.raises(BlobNotFound):  # quarantined, never served
            client.get(blob_id)


def test_the_cli_puts_and_shows_metadata(server: ServerProcess, tmp_path: Path) -> None:
    source = tmp_path / "flow.json"
    source.write_text(json.dumps(FLOW, indent=2))
    put = blobstore_cli(
        "put",
        "--type",
        "flow",
        "--filename",
        "my flow.json",
        "--content-type",
        "application/json",
        str(source),
        target=server.target,
    )
    assert put.returncode == 0, put.stderr
    blob_id = put.stdout.strip()
    assert blob_id == sha256_id(FLOW_TEXT)
    shown = {
        "blob_id": blob_id,
        "exists": True,
        "blob_type": "Flow",
        "size": len(FLOW_TEXT),
        "filename": "my flow.json",
        "content_type": "application/json",
    }
    stat = blobstore_cli("stat", blob_id, target=server.target)
    assert json.loads(stat.stdout) == shown
    out = tmp_path / "out.json"
    got = blobstore_cli("get", blob_id, "-o", str(out), target=server.target)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == shown
    assert out.read_bytes() == FLOW_TEXT
    refused = blobstore_cli(
        "put", "--content-type", "text/\u00e9", "-", target=server.target, stdin="x"
    )
    assert refused.returncode == 1 and "printable ASCII" in refused.stderr
