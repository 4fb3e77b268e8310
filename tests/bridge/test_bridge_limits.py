"""blobs/get holds a whole blob in memory, so the bridge caps it (--max-get-bytes)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from blobstore.errors import BlobTooLarge
from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.processes import ServerProcess


def test_blobs_get_over_the_cap_is_a_clear_error_on_both_read_paths(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    # A small unary limit makes the larger blobs take the streamed path.
    server = start_server("--max-unary-bytes", "4096")
    bridge = BridgeProcess(server.target, tmp_path / "bridge.log", "--max-get-bytes", "100000")
    rpc = HttpRpc(bridge.start().url, timeout=60)
    try:
        with BlobClient(server.target, timeout=30) as client:
            small, streamed, large = (os.urandom(n) for n in (1000, 50_000, 200_000))
            ids = []
            for index, data in enumerate((small, streamed, large)):
                path = tmp_path / f"blob-{index}"
                path.write_bytes(data)
                ids.append(client.put_file(path).info.blob_id)
        for blob_id, data in zip(ids[:2], (small, streamed), strict=True):
            got = rpc.rpc("blobs/get", {"blob_id": blob_id})
            assert got["result"] == {"data": base64.b64encode(data).decode(), "blob_type": "binary"}
        refused = rpc.rpc("blobs/get", {"blob_id": ids[2]})
        assert refused["error"]["code"] == -32002, refused
        assert refused["error"]["data"]["reason"] == "BLOB_TOO_LARGE"
        assert "100000" in refused["error"]["data"]["detail"]
        assert bridge.alive()
    finally:
        rpc.close()
        bridge.kill()


def test_client_get_max_size_refuses_before_reading_whole(server: ServerProcess) -> None:
    with BlobClient(server.target, timeout=30) as client:
        blob_id = client.put_bytes(b"x" * 5000).info.blob_id
        assert client.get(blob_id, max_size=5000).data == b"x" * 5000
        with pytest.raises(BlobTooLarge, match="over this reader's limit of 4999 bytes"):
            client.get(blob_id, max_size=4999)
