"""A second language: tests/node/client.js (@grpc/grpc-js + proto-loader, nothing but proto/).

The Node.js client runs against a real server and prints what every call returned; the
ids must equal the ones Python computes for the same data, bytes must come back exactly,
and errors must carry the right gRPC status codes. Node.js is part of the test set-up
(scripts/bootstrap runs `npm ci`), so a missing `node` fails the test instead of skipping.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blobstore.canonical_json import canonicalize_text, canonicalize_value
from blobstore.grpc.auth import token_hash
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id
from tests.tls_certs import make_pki, server_tls_args

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
# Non-canonical spelling on purpose: key order, white space, number forms, escapes.
JSON_TEXT = '{ "b" : 1e0, "a" : [1.0, "x", -0.0, 1E+2], "u": "\\u00e9\\ud83d\\ude00" }'
# The seed protocol's example document.
VALUE = {
    "processed_records": [{"id": "record_1", "data": {"name": "John", "status": "active"}}],
    "metadata": {"timestamp": "2024-01-15T10:30:00Z", "version": "1.2.3"},
}
ABSENT_ID = "sha256:" + "0" * 64
GRPC_NOT_FOUND = 5
GRPC_INVALID_ARGUMENT = 3
GRPC_PERMISSION_DENIED = 7
NODE_WRITER = "node-writer-token-61a9e3"
NODE_READER = "node-reader-token-2c7b5f"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for this test: install node 20+ and run scripts/bootstrap")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"Node.js packages missing: run scripts/bootstrap (npm ci in {NODE_DIR})")
    return node


def run_node_client(
    target: str, tmp_path: Path, binary: bytes, env: dict[str, str] | None = None
) -> dict[str, Any]:
    node = node_binary()
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"Node.js 20+ needed, found {version.stdout.strip()}"
    input_path = tmp_path / "node-input.json"
    input_path.write_text(
        json.dumps(
            {
                "json_text": JSON_TEXT,
                "binary_base64": base64.b64encode(binary).decode(),
                "value": VALUE,
            }
        )
    )
    done = subprocess.run(
        [node, str(NODE_DIR / "client.js"), target, str(input_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_NO_WARNINGS": "1", **(env or {})},
    )
    assert done.returncode == 0, f"node client failed ({done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_node_client_round_trips_and_errors(server: ServerProcess, tmp_path: Path) -> None:
    # Every byte value, and more than a few 64 KiB stream chunks.
    binary = bytes(range(256)) + os.urandom(300_000)
    check_node_result(run_node_client(server.target, tmp_path, binary), binary)


def test_node_client_over_tls_with_a_token(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """grpc-js with createSsl (a CA made at test time) and a bearer token as call credentials."""
    pki = make_pki(tmp_path / "pki")
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"{token_hash(NODE_WRITER)} node-writer read,write\n"
        f"{token_hash(NODE_READER)} node-reader read\n"
    )
    server = start_server(
        "--tokens-file",
        str(tokens),
        *server_tls_args(pki),
    )
    binary = bytes(range(256)) + os.urandom(200_000)
    env = {
        "BLOBSTORE_TLS_CA": str(pki.ca),
        "BLOBSTORE_TOKEN": NODE_WRITER,
        "BLOBSTORE_DENIED_TOKEN": NODE_READER,
    }
    result = run_node_client(server.target, tmp_path, binary, env)
    check_node_result(result, binary)
    assert result["put_denied"]["code"] == GRPC_PERMISSION_DENIED
    assert "needs write" in result["put_denied"]["details"]
    assert not blob_path(server.data_dir, sha256_id(b"a node reader writing")).exists()
    # Without the token the same client is refused (and a plaintext client cannot connect).
    env.pop("BLOBSTORE_TOKEN")
    node = node_binary()
    done = subprocess.run(
        [node, str(NODE_DIR / "client.js"), server.target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_NO_WARNINGS": "1", **env},
    )
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr, done.stderr
    log = server.log()
    assert NODE_WRITER not in log and NODE_READER not in log


def check_node_result(result: dict[str, Any], binary: bytes) -> None:
    canonical = canonicalize_text(JSON_TEXT)
    json_id, binary_id, value_id = (
        sha256_id(canonical),
        sha256_id(binary),
        sha256_id(canonicalize_value(VALUE)),
    )
    assert result["put_json_text"] == {
        "id": json_id,
        "blob_type": "BLOB_TYPE_JSON",
        "size": len(canonical),
        "created": True,
    }
    assert result["put_binary"] == {
        "id": binary_id,
        "blob_type": "BLOB_TYPE_BINARY",
        "size": len(binary),
        "created": True,
    }
    assert result["put_value"]["id"] == value_id
    assert result["put_value"]["blob_type"] == "BLOB_TYPE_JSON"

    assert result["get_json_text"]["id"] == json_id
    assert base64.b64decode(result["get_json_text"]["data_base64"]) == canonical
    assert result["get_binary"]["blob_type"] == "BLOB_TYPE_BINARY"
    assert base64.b64decode(result["get_binary"]["data_base64"]) == binary
    assert result["get_value"]["id"] == value_id
    assert result["get_value"]["json"] == VALUE

    assert result["stat_binary"] == {
        "id": binary_id,
        "exists": True,
        "blob_type": "BLOB_TYPE_BINARY",
        "size": len(binary),
    }
    assert result["stat_absent"] == {"id": ABSENT_ID, "exists": False}
    # Asked for: the JSON blob, the absent id, and the binary blob's bare 64-hex form.
    assert result["find_missing"] == [ABSENT_ID]

    # The same bytes streamed in chunks get the same id; nothing new is stored.
    assert result["put_stream"]["id"] == binary_id
    assert result["put_stream"].get("created") is False
    assert result["get_stream"]["id"] == binary_id
    assert base64.b64decode(result["get_stream"]["data_base64"]) == binary

    assert result["get_absent"]["code"] == GRPC_NOT_FOUND
    assert ABSENT_ID in result["get_absent"]["details"]
    assert result["stat_bad_id"]["code"] == GRPC_INVALID_ARGUMENT
    assert "invalid blob id" in result["stat_bad_id"]["details"]
    assert result["put_bad_json"]["code"] == GRPC_INVALID_ARGUMENT
    assert "invalid JSON" in result["put_bad_json"]["details"]


def test_node_lock_file_pins_what_package_json_names() -> None:
    package = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert set(package["dependencies"]) == {"@grpc/grpc-js", "@grpc/proto-loader"}
    for name, version in package["dependencies"].items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
