"""A flow with a filename put through the bridge reads back with both everywhere: through
blobstore.v1 with the real grpcurl (Get, Stat, GetStream) and the Python client, through
the `blobstore` CLI, and through the bridge itself (issue 11's "done when")."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from blobstore.client import BlobClient
from blobstore.model import BlobMeta, BlobType
from tests.bridge_processes import Stack
from tests.bridge_seed import json_id
from tests.rpc_helpers import grpcurl_dir

FLOW = {
    "schema": "https://stepflow.org/schemas/v1/flow.json",
    "name": "résumé flow",
    "steps": [{"id": "s1", "component": "/python/udf", "input": {"n": 1.0}}],
}
CANONICAL = json.dumps(
    {**FLOW, "steps": [{"component": "/python/udf", "id": "s1", "input": {"n": 1}}]},
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
).encode()
FILENAME = "flows/résumé flow.yaml"


def grpcurl(target: str, method: str, request: dict[str, Any]) -> list[Any]:
    """The replies of one grpcurl call (several for a server stream)."""
    done = subprocess.run(
        [
            str(grpcurl_dir() / "grpcurl"),
            "-plaintext",
            "-format-error",
            "-d",
            json.dumps(request),
            target,
            f"blobstore.v1.BlobService/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    decoder, text, replies = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        reply, end = decoder.raw_decode(text)
        replies.append(reply)
        text = text[end:].strip()
    return replies


def blobstore_cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobstore.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BLOBSTORE_TARGET": target},
        timeout=60,
        check=False,
    )


def test_a_flow_with_a_filename_reads_back_with_both_everywhere(
    bridge_stack: Stack, tmp_path: Path
) -> None:
    rpc, target = bridge_stack.http, bridge_stack.server.target
    put = rpc.result("blobs/put", {"data": FLOW, "blob_type": "flow", "filename": FILENAME})
    blob_id = put["blob_id"]
    assert put == {"blob_id": json_id(FLOW), "filename": FILENAME}

    # The bridge.
    assert rpc.result("blobs/get", {"blob_id": blob_id}) == {
        "data": json.loads(CANONICAL),
        "blob_type": "flow",
        "filename": FILENAME,
    }

    # blobstore.v1 through grpcurl: Get (as JSON and as bytes), Stat, GetStream.
    [got] = grpcurl(target, "Get", {"id": blob_id, "as_json_value": True})
    assert (got["blob_type"], got["filename"], got["json"]) == (
        "BLOB_TYPE_FLOW",
        FILENAME,
        json.loads(CANONICAL),
    )
    [raw] = grpcurl(target, "Get", {"id": blob_id})
    assert base64.b64decode(raw["data"]) == CANONICAL
    [stat] = grpcurl(target, "Stat", {"id": blob_id})
    assert (stat["exists"], stat["blob_type"], stat["filename"]) == (
        True,
        "BLOB_TYPE_FLOW",
        FILENAME,
    )
    first, *_ = grpcurl(target, "GetStream", {"id": blob_id})
    assert (first["info"]["blob_type"], first["info"]["filename"]) == ("BLOB_TYPE_FLOW", FILENAME)
    assert "content_type" not in first["info"]  # none was given

    # blobstore.v1 through the Python client.
    with BlobClient(target) as client:
        blob = client.get(blob_id)
    assert (blob.data, blob.info.blob_type, blob.info.meta) == (
        CANONICAL,
        BlobType.FLOW,
        BlobMeta(FILENAME),
    )

    # The CLI.
    shown = {
        "blob_id": blob_id,
        "exists": True,
        "blob_type": "Flow",
        "size": len(CANONICAL),
        "filename": FILENAME,
    }
    stat_cli = blobstore_cli(target, "stat", blob_id)
    assert stat_cli.returncode == 0, stat_cli.stderr
    assert json.loads(stat_cli.stdout) == shown
    out = tmp_path / "flow.json"
    get_cli = blobstore_cli(target, "get", blob_id, "-o", str(out))
    assert get_cli.returncode == 0, get_cli.stderr
    assert json.loads(get_cli.stdout) == shown
    assert out.read_bytes() == CANONICAL
