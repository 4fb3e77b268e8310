"""Round trips through a real server process: JSON and binary, ids as users expect."""

from __future__ import annotations

from blobstore.client import BlobClient, decode_json
from blobstore.model import BlobType


def test_equal_json_values_get_one_id(client: BlobClient) -> None:
    first = client.put_json_text(b'{"b":1,"a":[1.0,"x"]}')
    second = client.put_json_text(b'{ "a" : [1, "x"], "b" : 1e0 }')
    assert first.info.blob_id == second.info.blob_id
    assert first.created and not second.created
    blob = client.get(first.info.blob_id)
    assert blob.info.blob_type is BlobType.JSON
    assert blob.data == b'{"a":[1,"x"],"b":1}'
    assert decode_json(blob.data) == {"a": [1, "x"], "b": 1}


def test_binary_round_trip(client: BlobClient) -> None:
    data = bytes(range(256)) * 10
    result = client.put_bytes(data)
    assert result.info.blob_type is BlobType.BINARY
    assert client.get(result.info.blob_id).data == data
