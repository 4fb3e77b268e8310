"""The stepflow.v1 adapter's own rules: bare ids, type names, the Value encoding memo."""

from __future__ import annotations

import pytest

from blobstore.errors import InvalidArgument, InvalidBlobId
from blobstore.grpc.stepflow_servicer import EncodedValues
from blobstore.ids import BlobId, parse_bare_id
from blobstore.model import BlobType
from blobstore.stepflow_names import blob_type_of

HEX = "0123456789abcdef" * 4


def test_bare_ids_either_case_become_canonical() -> None:
    assert parse_bare_id(HEX) == "sha256:" + HEX
    assert parse_bare_id(HEX.upper()) == "sha256:" + HEX


@pytest.mark.parametrize(
    "text", ["", HEX[:63], HEX + "0", "sha256:" + HEX, HEX[:63] + "g", " " + HEX[1:], "../" * 22]
)
def test_anything_else_is_an_invalid_id(text: str) -> None:
    with pytest.raises(InvalidBlobId):
        parse_bare_id(text)


def test_type_names() -> None:
    assert blob_type_of("") is BlobType.JSON
    assert blob_type_of("data") is BlobType.JSON
    assert blob_type_of("flow") is BlobType.FLOW
    assert blob_type_of("binary") is BlobType.BINARY
    for name in ("Data", "json", "BINARY", " data"):
        with pytest.raises(InvalidArgument):
            blob_type_of(name)


def test_encoded_values_stay_within_their_budget() -> None:
    values = EncodedValues(max_bytes=100, max_entry=40)
    ids = [BlobId(f"sha256:{n:064x}") for n in range(5)]
    for blob_id in ids[:3]:
        values.add(blob_id, b"x" * 30)
    assert values.get(ids[0]) == b"x" * 30  # now the most recent
    values.add(ids[3], b"y" * 30)  # 120 bytes: the least recent (ids[1]) goes
    assert values.get(ids[1]) is None
    assert values.get(ids[0]) is not None and values.get(ids[3]) is not None
    values.add(ids[4], b"z" * 41)  # over max_entry: not kept
    assert values.get(ids[4]) is None
