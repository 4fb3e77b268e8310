"""Pure pieces of scale-out: `--target` lists, storage URLs, the store's failures → our errors,
object metadata. (The behaviour on a real store is in tests/contract and tests/process.)"""

from __future__ import annotations

import pytest
from obstore.exceptions import GenericError

from blobstore.errors import BlobNotFound, DataLoss, Overloaded, StorageFull, Unavailable
from blobstore.ids import blob_id_from_digest
from blobstore.model import NO_META, BlobMeta, BlobType
from blobstore.storage.objectstore import BadStorageUrl, metadata, parse
from blobstore.storage.objectstore.errors import translate
from blobstore.targets import ROUND_ROBIN, channel_target

BLOB = blob_id_from_digest("ab" * 32)


def test_one_target_is_unchanged_and_lists_are_balanced() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert channel_target("dns:///blobs.internal:50051") == (
        "dns:///blobs.internal:50051",
        [ROUND_ROBIN],
    )
    assert channel_target("127.0.0.1:1, 127.0.0.2:2") == (
        "ipv4:127.0.0.1:1,127.0.0.2:2",
        [ROUND_ROBIN],
    )
    assert channel_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", [ROUND_ROBIN])
    target, _ = channel_target("localhost:7,127.0.0.1:8")
    assert (
        target.startswith("ipv4:") and target.endswith(",127.0.0.1:8") and "127.0.0.1:7" in target
    )
    with pytest.raises(ValueError, match="not host:port"):
        channel_target("127.0.0.1:1,nonsense")


def test_storage_urls() -> None:
    location = parse("s3://bucket/some/prefix/?endpoint=http://h:1&region=eu-west-3")
    assert (location.bucket, location.prefix) == ("bucket", "some/prefix")
    assert location.config == {"endpoint": "http://h:1", "region": "eu-west-3"}
    with pytest.raises(BadStorageUrl, match="AWS_ACCESS_KEY_ID"):
        parse("s3://bucket/p?secret_access_key=oops")
    with pytest.raises(BadStorageUrl):
        parse("s3:///no-bucket")
    with pytest.raises(BadStorageUrl, match="cannot use"):
        parse("s3://bucket/p?no_such_setting=1").store()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>",
            Overloaded,
        ),
        ("Server returned non-2xx status code: 429 Too Many Requests", Overloaded),
        ("<Code>QuotaExceeded</Code>", StorageFull),
        ("Server returned non-2xx status code: 507 Insufficient Storage", StorageFull),
        ("HTTP error: error sending request\n  ConnectionRefused", Unavailable),
        ("Server returned non-2xx status code: 500 Internal Server Error", Unavailable),
    ],
)
def test_store_failures_become_store_errors(text: str, expected: type[Exception]) -> None:
    error = translate(GenericError(text), BLOB)
    assert type(error) is expected
    assert "\n" not in str(error)  # obstore's debug dump stays out of replies


def test_a_missing_object_is_a_missing_blob() -> None:
    assert isinstance(translate(FileNotFoundError("gone"), BLOB), BlobNotFound)


def test_metadata_round_trip_and_broken_metadata() -> None:
    meta = BlobMeta(filename=" a/b ü %.txt ", content_type="text/plain; charset=utf-8")
    attributes = metadata.encode(BlobType.FLOW, 10, meta)
    assert all(value.isascii() and value == value.strip() for value in attributes.values())
    info = metadata.decode(BLOB, attributes, 10)
    assert (info.blob_type, info.size, info.meta) == (BlobType.FLOW, 10, meta)
    assert metadata.decode(BLOB, metadata.encode(BlobType.BINARY, 3), 3).meta == NO_META
    with pytest.raises(DataLoss, match="metadata says 10"):
        metadata.decode(BLOB, attributes, 11)
    with pytest.raises(DataLoss, match="blob-type"):
        metadata.decode(BLOB, {"blob-size": "3"}, 3)
    headers = metadata.as_copy_headers(attributes)
    assert headers["x-amz-metadata-directive"] == "REPLACE"
    assert (
        headers["x-amz-meta-blob-type"] == "Flow" and headers["Content-Type"] == meta.content_type
    )
