"""Stepflow's REST routes on the bridge, and one blob through every path we offer.

A real server and bridge; the routes are called over real HTTP. The last test
writes blobs with each of grpcurl (blobstore.v1), the bridge's blobs/put, a
stepflow-py 0.13 worker (stepflow.v1) and REST, and reads each back through
every other path, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import rfc8785

from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.bridge_processes import BridgeProcess, HttpReply, HttpRpc, Stack
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_files, blob_path, grpcurl_dir
from tests.stepflow.stepflow_helpers import binary, sdk_calls
from tests.stepflow_venv import StepflowVenv

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
ROUTE = "/api/v1/blobs"
GRPCURL = Path(sys.executable).parent / "grpcurl"


def post_json(http: HttpRpc, body: object) -> HttpReply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.request("POST", ROUTE, raw, {"Content-Type": "application/json"})


def post_bytes(http: HttpRpc, data: bytes, filename: str | None = None) -> HttpReply:
    headers = {"Content-Type": "application/octet-stream"}
    if filename is not None:
        headers["X-Blob-Filename"] = filename
    return http.request("POST", ROUTE, data, headers)


def get(http: HttpRpc, blob_id: str, raw: bool = False) -> HttpReply:
    headers = {"Accept": "application/octet-stream"} if raw else {}
    return http.request("GET", f"{ROUTE}/{blob_id}", None, headers)


def test_json_put_and_get(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    value: dict[str, Any] = {"b": [1, 2.50, 1e2, -0.0], "a": "ü", "c": {"y": None, "x": False}}
    canonical = rfc8785.dumps(value)
    for key in ("data", "json_data", "jsonData"):
        reply = post_json(rpc, {key: value})
        assert reply.status == 200, reply.body
        assert reply.json() == {"blobId": hashlib.sha256(canonical).hexdigest()}
    blob_id = hashlib.sha256(canonical).hexdigest()
    answer = get(rpc, blob_id.upper())
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"data": value, "blobType": "data", "blobId": blob_id}
    raw = get(rpc, blob_id, raw=True)
    assert (raw.status, raw.body, raw.headers["x-blob-type"]) == (200, canonical, "data")
    assert grpc_client.get("sha256:" + blob_id).data == canonical


def test_flow_and_filename(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    flow = post_json(rpc, {"data": {"steps": []}, "blobType": "flow", "filename": "f.json"})
    assert flow.json()["filename"] == "f.json"
    info = grpc_client.stat("sha256:" + flow.json()["blobId"])
    assert info is not None and info.blob_type is BlobType.FLOW
    assert info.meta.filename == "f.json"
    assert get(rpc, flow.json()["blobId"]).json()["blobType"] == "flow"


def test_binary_put_and_get(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    data = bytes(range(256)) * 40
    reply = post_bytes(rpc, data)
    blob_id = hashlib.sha256(data).hexdigest()
    assert reply.json() == {"blobId": blob_id}
    assert get(rpc, blob_id).json() == {"data": None, "blobType": "binary", "blobId": blob_id}
    raw = get(rpc, blob_id, raw=True)
    assert raw.body == data and raw.headers["x-blob-type"] == "binary"
    assert raw.headers["Content-Type"] == "application/octet-stream"
    assert grpc_client.get("sha256:" + blob_id).data == data

    empty = post_bytes(rpc, b"")
    assert empty.json() == {"blobId": hashlib.sha256(b"").hexdigest()}
    assert get(rpc, empty.json()["blobId"], raw=True).body == b""


def test_binary_with_filename(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    data = bytes(range(256)) * 41
    reply = post_bytes(rpc, data, filename="report 2024.pdf")
    blob_id = hashlib.sha256(data).hexdigest()
    assert reply.json() == {"blobId": blob_id, "filename": "report 2024.pdf"}
    answer = get(rpc, blob_id).json()
    assert answer == {
        "data": None,
        "blobType": "binary",
        "blobId": blob_id,
        "filename": "report 2024.pdf",
        "contentType": "application/octet-stream",
    }
    raw = get(rpc, blob_id, raw=True)
    assert raw.body == data and raw.headers["x-blob-type"] == "binary"
    assert "report%202024.pdf" in raw.headers["Content-Disposition"]
    assert grpc_client.get("sha256:" + blob_id).data == data


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{nope", "INVALID_JSON"),
        (b"[1, 2]", "INVALID_BODY"),
        (b'{"filename": "x"}', "MISSING_DATA"),
        (b'{"data": 1, "blobType": "binary"}', "INVALID_BLOB_TYPE"),
        (b'{"data": 1, "blobType": "Json"}', "INVALID_BLOB_TYPE"),
        (b'{"data": {"a": 1, "a": 2}}', "INVALID_JSON"),
        (b'{"data": NaN}', "INVALID_JSON"),
        (b'{"data": 1, "filename": 7}', "INVALID_FILENAME"),
        (b'{"data": 1, "filename": "a\\nb"}', "INVALID_ARGUMENT"),
        (b'{"data": 1, "blobType": 3}', "INVALID_BLOB_TYPE"),
    ],
)
def test_bad_puts_are_400(rpc: HttpRpc, body: bytes, reason: str) -> None:
    reply = post_json(rpc, body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["reason"] == reason


def test_bad_and_unknown_ids(rpc: HttpRpc) -> None:
    for text in ("zz", "0" * 63, "sha256:" + "0" * 64, "0" * 65):
        reply = get(rpc, text)
        assert reply.status == 400, text
        assert reply.json()["error"]["reason"] == "INVALID_BLOB_ID"
    for raw in (False, True):
        missing = get(rpc, "a" * 64, raw=raw)
        assert missing.status == 404
        assert missing.json()["error"]["reason"] == "BLOB_NOT_FOUND"


def test_large_binary_streams_through_the_bridge(bridge_stack: Stack) -> None:
    """64 MiB, twice the bridge's JSON body limit, up and down in bounded bridge memory."""
    size = 64 * MiB
    block = hashlib.sha256(b"large").digest() * (MiB // 32)
    digest = hashlib.sha256()
    for _ in range(size // MiB):
        digest.update(block)
    bridge = psutil.Process(bridge_stack.bridge.pid)
    before = bridge.memory_info().rss

    def body() -> Iterator[bytes]:
        for _ in range(size // MiB):
            yield block

    http = bridge_stack.http
    http.connection.request(
        "POST",
        ROUTE,
        body=body(),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
    )
    reply = http.connection.getresponse()
    assert reply.status == 200, reply.read()
    assert json.loads(reply.read()) == {"blobId": digest.hexdigest()}

    http.connection.request(
        "GET", f"{ROUTE}/{digest.hexdigest()}", headers={"Accept": "application/octet-stream"}
    )
    download = http.connection.getresponse()
    assert download.status == 200
    assert int(download.headers["Content-Length"]) == size
    received = hashlib.sha256()
    while chunk := download.read(MiB):
        received.update(chunk)
    assert received.hexdigest() == digest.hexdigest()
    # Whole, either way the blob would have added 64 MiB at least.
    assert bridge.memory_info().rss - before < 24 * MiB


def _grpcurl(target: str, method: str, request: dict[str, Any]) -> Any:
    done = subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", json.dumps(request), target, method],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_writer_every_reader(bridge_stack: Stack, stepflow: StepflowVenv) -> None:
    """A blob written by grpcurl, the bridge, a stepflow-py worker or REST reads back everywhere."""
    target, http = bridge_stack.server.target, bridge_stack.http
    contents = {
        name: f"written by {name} ".encode() * 50 for name in ("grpcurl", "bridge", "sdk", "rest")
    }
    ids = {
        "grpcurl": _grpcurl(
            target,
            "blobstore.v1.BlobService/Put",
            {
                "data": base64.b64encode(contents["grpcurl"]).decode(),
                "blob_type": "BLOB_TYPE_BINARY",
            },
        )["id"].removeprefix("sha256:"),
        "bridge": http.result(
            "blobs/put",
            {"data": base64.b64encode(contents["bridge"]).decode(), "blob_type": "Binary"},
        )["blob_id"].removeprefix("sha256:"),
        "sdk": sdk_calls(
            stepflow, target, [{"op": "put_blob_binary", "arg": binary(contents["sdk"])}]
        )[0]["result"],
        "rest": post_bytes(http, contents["rest"]).json()["blobId"],
    }
    for name, blob_id in ids.items():
        assert blob_id == hashlib.sha256(contents[name]).hexdigest(), name
    sdk_reads = sdk_calls(
        stepflow, target, [{"op": "get_blob_binary", "arg": blob_id} for blob_id in ids.values()]
    )
    for (name, blob_id), sdk_read in zip(ids.items(), sdk_reads, strict=True):
        data = contents[name]
        by_grpcurl = _grpcurl(target, "blobstore.v1.BlobService/Get", {"id": "sha256:" + blob_id})
        assert base64.b64decode(by_grpcurl["data"]) == data, name
        by_bridge = http.result("blobs/get", {"blob_id": "sha256:" + blob_id})
        assert base64.b64decode(by_bridge["data"]) == data, name
        assert sdk_read == {"result": binary(data)}, name
        assert get(http, blob_id, raw=True).body == data, name
        by_stepflow = _grpcurl(target, "stepflow.v1.BlobService/GetBlob", {"blob_id": blob_id})
        assert base64.b64decode(by_stepflow["raw_data"]) == data, name

    # JSON: one value spelled four ways is one blob, read back the same everywhere.
    value: dict[str, Any] = {"z": [1, 2.5, "x"], "a": {"nested": True}}
    canonical = rfc8785.dumps(value)
    json_ids = {
        _grpcurl(target, "blobstore.v1.BlobService/Put", {"json": value})["id"].removeprefix(
            "sha256:"
        ),
        http.result("blobs/put", {"data": value})["blob_id"].removeprefix("sha256:"),
        sdk_calls(stepflow, target, [{"op": "put_blob", "arg": value}])[0]["result"],
        post_json(http, {"data": value}).json()["blobId"],
    }
    assert json_ids == {hashlib.sha256(canonical).hexdigest()}
    (json_id,) = json_ids
    assert http.result("blobs/get", {"blob_id": json_id})["data"] == value
    assert sdk_calls(stepflow, target, [{"op": "get_blob", "arg": json_id}]) == [{"result": value}]
    assert get(http, json_id, raw=True).body == canonical
    by_grpcurl = _grpcurl(target, "blobstore.v1.BlobService/Get", {"id": json_id})
    assert base64.b64decode(by_grpcurl["data"]) == canonical


def test_a_corrupt_blob_is_an_error_never_its_bytes(bridge_stack: Stack) -> None:
    http = bridge_stack.http
    data = b"soon to be damaged on disk " * 100
    blob_id = post_bytes(http, data).json()["blobId"]
    path = blob_path(bridge_stack.server.data_dir, "sha256:" + blob_id)
    raw = bytearray(path.read_bytes())
    middle = raw.index(b"damaged")
    raw[middle] ^= 0x01
    path.write_bytes(bytes(raw))
    reply = get(http, blob_id, raw=True)
    assert reply.status == 500
    assert reply.json()["error"]["reason"] == "DATA_LOSS"
    assert data not in reply.body


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        (b"plain name.bin", "plain name.bin"),
        ("naïve ☃.bin".encode(), "naïve ☃.bin"),  # raw UTF-8 bytes, as curl sends them
        (b"UTF-8''na%C3%AFve%20%E2%98%83.bin", "naïve ☃.bin"),  # RFC 8187 ext-value
        (b"utf-8''100%25.bin", "100%.bin"),
    ],
)
def test_filename_header_outside_ascii(
    rpc: HttpRpc, grpc_client: BlobClient, header: bytes, stored: str
) -> None:
    data = b"named " + header
    reply = rpc.request(
        "POST",
        ROUTE,
        data,
        {"Content-Type": "application/octet-stream", "X-Blob-Filename": header},  # type: ignore[dict-item]
    )
    assert reply.status == 200, reply.body
    assert reply.json()["filename"] == stored
    info = grpc_client.stat("sha256:" + reply.json()["blobId"])
    assert info is not None and info.meta.filename == stored


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"\xff\xfe.bin", "INVALID_FILENAME"),  # not UTF-8
        (b"UTF-8''%FF.bin", "INVALID_FILENAME"),  # percent-encoded, not UTF-8
        (b"UTF-8''a%0Ab.bin", "INVALID_ARGUMENT"),  # a control character
    ],
)
def test_bad_filename_header_is_400_and_the_connection_lives(
    rpc: HttpRpc, header: bytes, reason: str
) -> None:
    reply = rpc.request(
        "POST",
        ROUTE,
        b"never stored",
        {"Content-Type": "application/octet-stream", "X-Blob-Filename": header},  # type: ignore[dict-item]
    )
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["reason"] == reason
    assert "filename" in reply.json()["error"]["message"].lower()
    # The same kept-alive connection goes on serving.
    assert get(rpc, hashlib.sha256(b"never stored").hexdigest()).status == 404


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server that takes blobs up to 2 MiB, behind a bridge with a 1 s body timeout."""
    directory = tmp_path_factory.mktemp("rest-limits")
    server = ServerProcess(
        directory / "data", directory / "server.log", "--max-blob-bytes", str(2 * MiB)
    ).start()
    bridge = BridgeProcess(
        server.target, directory / "bridge.log", "--body-timeout-seconds", "1"
    ).start()
    http = HttpRpc(bridge.url)
    try:
        yield Stack(server, bridge, http)
    finally:
        http.close()
        bridge.kill()
        server.kill()


def test_a_streamed_body_over_the_services_limit_is_413(small_stack: Stack) -> None:
    data = b"z" * (4 * MiB)
    for length in (True, False):  # with Content-Length, and chunked (size unknown up front)
        http = HttpRpc(small_stack.bridge.url)
        try:
            headers = {"Content-Type": "application/octet-stream"}
            if length:
                reply = http.request("POST", ROUTE, data, headers)
            else:
                http.connection.request("POST", ROUTE, body=iter([data[:MiB]] * 4), headers=headers)
                response = http.connection.getresponse()
                reply = HttpReply(response.status, response.headers, response.read())
        finally:
            http.close()
        assert reply.status == 413, reply.body
        assert reply.json()["error"]["reason"] == "BLOB_TOO_LARGE"
    assert not blob_files(small_stack.server.data_dir)


def _raw_post(stack: Stack, head_and_body: bytes, until: bytes) -> bytes:
    """Sends a hand-made POST on a raw socket; what came back once `until` arrived (or the
    connection closed)."""
    host, port = stack.bridge.url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/blobs HTTP/1.1\r\nHost: x\r\n" + head_and_body)
        answer = b""
        while until not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def test_a_stalled_body_is_408_and_stores_nothing(small_stack: Stack) -> None:
    # The answer comes at once; the close only after aiohttp's lingering time.
    answer = _raw_post(
        small_stack,
        b"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
        b"only part of the body",
        until=b"BODY_TIMEOUT",
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"BODY_TIMEOUT" in answer
    assert small_stack.server.alive() and small_stack.bridge.alive()
    assert not blob_files(small_stack.server.data_dir)


def test_a_broken_chunked_body_is_an_error_and_stores_nothing(small_stack: Stack) -> None:
    answer = _raw_post(
        small_stack,
        b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nnot-a-chunk-size\r\n",
        until=b"\r\n\r\n",
    )
    # aiohttp's parser answers this one itself (the handler's read fails too, as 400).
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer
    assert b"Traceback" not in answer
    assert small_stack.server.alive() and small_stack.bridge.alive()
    assert not blob_files(small_stack.server.data_dir)


def test_readme_stepflow_commands_work_as_shown(bridge_stack: Stack, tmp_path: Path) -> None:
    """The README's Stepflow section: its grpcurl and curl commands, run as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("<!-- stepflow-section -->", 1)[1].split("<!-- ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands: list[tuple[str, str]] = []  # (command, the output shown after it)
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("# "):
            commands[-1] = (commands[-1][0], line[2:])
        else:
            commands.append((line, ""))
    report = os.urandom(3000)
    (tmp_path / "report.pdf").write_bytes(report)
    report_id = hashlib.sha256(report).hexdigest()
    bridge = bridge_stack.bridge.url.rstrip("/")
    env = {**os.environ, "PATH": f"{grpcurl_dir()}:{os.environ['PATH']}"}
    for command, shown in commands:
        concrete = (
            command.replace("127.0.0.1:50051", bridge_stack.server.target)
            .replace("http://127.0.0.1:8080", bridge)
            .replace("<64 hex>", report_id)
        )
        done = subprocess.run(
            ["bash", "-c", concrete], cwd=tmp_path, env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, (command, done.stderr)
        if shown:
            expected = json.loads(shown.replace("<64 hex>", report_id))
            assert json.loads(done.stdout) == expected, command
    assert (tmp_path / "out.pdf").read_bytes() == report
