"""A JSON-RPC batch of blobs/put or blobs/get through the real bridge over HTTP becomes
BatchPut / BatchGet calls on the real server, and each element keeps its own answer."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.bridge_processes import stack
from tests.rpc_helpers import sha256_id


def _put(request_id: int, data: object, blob_type: str = "data") -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "blobs/put",
        "params": {"data": data, "blob_type": blob_type},
    }


def _get(request_id: int, blob_id: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "blobs/get", "params": [blob_id]}


def test_a_batch_of_puts_and_gets_goes_as_batch_calls(tmp_path: Path) -> None:
    with stack(tmp_path, server_args=("--access-log",)) as running:
        binary = base64.b64encode(b"\x00\x01binary").decode()
        puts = [
            _put(1, {"b": 2, "a": [1, 2.0]}),
            _put(2, binary, "binary"),
            _put(3, "not base64!", "binary"),  # this element's own error
            _put(4, {"flow": True}, "flow"),
            {"jsonrpc": "2.0", "method": "blobs/put", "params": {"data": 5}},  # notification
            _put(6, 1, "no-such-type"),
        ]
        answers = {a["id"]: a for a in running.http.call(puts)}
        assert set(answers) == {1, 2, 3, 4, 6}
        doc_id = answers[1]["result"]["blob_id"]
        assert doc_id == sha256_id(b'{"a":[1,2],"b":2}')
        assert answers[2]["result"]["blob_id"] == sha256_id(b"\x00\x01binary")
        assert answers[3]["error"]["code"] == -32602
        assert answers[3]["error"]["data"]["reason"] == "INVALID_BASE64"
        assert "result" in answers[4]
        assert answers[6]["error"]["code"] == -32602

        gets = [
            _get(10, doc_id),
            _get(11, answers[2]["result"]["blob_id"]),
            _get(12, "sha256:" + "0" * 64),  # not stored
            _get(13, "nonsense"),
            {"jsonrpc": "2.0", "id": 14, "method": "no/such", "params": []},
        ]
        got = {a["id"]: a for a in running.http.call(gets)}
        assert got[10]["result"] == {"data": {"a": [1, 2], "b": 2}, "blob_type": "data"}
        assert base64.b64decode(got[11]["result"]["data"]) == b"\x00\x01binary"
        assert got[11]["result"]["blob_type"] == "binary"
        assert got[12]["error"]["code"] == -32008
        assert got[13]["error"]["code"] == -32602
        assert got[14]["error"]["code"] == -32601
        # The integer 5 of the notification was stored too, by the same batch call.
        assert running.http.rpc("blobs/get", [sha256_id(b"5")])["result"]["data"] == 5

        log = running.server.log()
        assert log.count("BatchPut") == 1, log
        assert log.count("BatchGet") == 1, log
        assert "/Put " not in log and "blobstore.v1.BlobService/Put" not in log
