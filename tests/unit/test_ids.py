"""Blob ids: which texts are ids (and their normal form), why the others are not, and that
the store gives content exactly the ids docs/blob-ids.md documents."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.errors import InvalidBlobId
from blobstore.ids import PREFIX, blob_id_from_digest, hex_digest, parse_blob_id
from blobstore.model import BlobType
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.store import BlobStore
from tests import blob_id_vectors as vectors

DIGEST = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EXPECTED = "expected 'sha256:' + 64 lowercase hex digits"


@pytest.mark.parametrize("row", vectors.id_texts(), ids=lambda row: row.text)
def test_documented_id_texts(row: vectors.IdText) -> None:
    if row.normal is not None:
        assert parse_blob_id(row.text) == row.normal
        return
    assert row.reason is not None
    with pytest.raises(InvalidBlobId) as caught:
        parse_blob_id(row.text)
    message = str(caught.value)
    assert row.reason in message
    assert EXPECTED in message
    assert repr(row.text)[:40] in message  # says which text it refused


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("sha256:", "the digest has 0 characters"),
        (" " + DIGEST, "white space"),
        (DIGEST + " ", "white space"),
        ("sha256:" + DIGEST + "\n", "white space"),
        ("sha256: " + DIGEST, "white space"),
        (DIGEST[:32] + "\t" + DIGEST[32:], "white space"),
        ("sha256:" + DIGEST[:63] + "\x00", "control"),
        ("\x00" * 64, "control"),
        ("sha256:" + DIGEST[:62] + "\u200b\u200b", "unprintable"),
        ("\u0663" * 64, "hex digits 0-9 a-f"),  # ARABIC-INDIC DIGIT THREE
        ("sha256:" + "\uff13" * 64, "hex digits 0-9 a-f"),  # FULLWIDTH DIGIT THREE
        ("sha256:" + DIGEST.upper(), "lowercase"),
        ("Sha256:" + DIGEST, "the prefix must be lowercase"),
        ("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709", "'sha1' is not supported"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "'md5' is not supported"),
        ("sha256:" + DIGEST[:61] + "/..", "looks like a path"),
        ("..\\..\\" + DIGEST[:58], "looks like a path"),
        ("." + DIGEST[:63], "looks like a path"),
        ("x" * 10_000, "the digest has 10000 characters"),
    ],
)
def test_malformed_ids_are_rejected_saying_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidBlobId) as caught:
        parse_blob_id(text)
    message = str(caught.value)
    assert reason in message
    assert EXPECTED in message
    assert len(message) < 300  # a huge id is clipped, not echoed
    assert message.isprintable()  # control characters are shown escaped


@pytest.mark.parametrize("value", [None, b"sha256:" + DIGEST.encode(), 42])
def test_an_id_that_is_not_a_string_is_rejected(value: object) -> None:
    with pytest.raises(InvalidBlobId, match=f"expected a string, got {type(value).__name__}"):
        parse_blob_id(value)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_every_digest_is_an_id_in_both_forms(digest: str) -> None:
    assert parse_blob_id(PREFIX + digest) == parse_blob_id(digest) == PREFIX + digest
    assert hex_digest(parse_blob_id(digest)) == digest
    assert blob_id_from_digest(digest) == PREFIX + digest


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=80)
    | st.text(st.sampled_from("0123456789abcdefABCDEF:sha256 ./\\\x00"), max_size=75)
    | st.text(st.sampled_from("0123456789abcdef"), min_size=62, max_size=66).map(
        lambda digits: "sha256:" + digits
    )
)
def test_a_text_is_an_id_exactly_when_it_is_64_lowercase_hex_digits(text: str) -> None:
    digest = text.removeprefix(PREFIX)
    if re.fullmatch(r"[0-9a-f]{64}", digest, re.ASCII):
        assert parse_blob_id(text) == PREFIX + digest
    else:
        with pytest.raises(InvalidBlobId, match="expected 'sha256:'"):
            parse_blob_id(text)


# -- the store gives content the documented ids ---------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        yield BlobStore(backend)
    finally:
        backend.close()


@pytest.mark.parametrize(
    "vector", vectors.content_vectors(), ids=lambda v: f"{v.number}-{v.blob_type}"
)
async def test_the_store_assigns_the_documented_id(
    store: BlobStore, vector: vectors.ContentVector
) -> None:
    result = await store.put(BlobType(vector.blob_type), vector.content)
    assert result.info.blob_id == vector.blob_id
    assert result.info.size == len(vector.stored)
    blob = await store.get(parse_blob_id(vector.blob_id))
    assert blob.data == vector.stored
    assert blob.info.blob_type is BlobType(vector.blob_type)


@pytest.mark.parametrize("first", [BlobType.JSON, BlobType.BINARY])
async def test_content_that_already_exists_keeps_its_first_type(
    store: BlobStore, first: BlobType
) -> None:
    """Vectors 12 and 14: Json `{ "a": 1 }` and Binary `{"a":1}` store the same bytes."""
    by_number = {v.number: v for v in vectors.content_vectors()}
    as_json, as_binary = by_number[12], by_number[14]
    assert as_json.blob_id == as_binary.blob_id
    puts = [(BlobType.JSON, as_json.content), (BlobType.BINARY, as_binary.content)]
    if first is BlobType.BINARY:
        puts.reverse()
    created = await store.put(*puts[0])
    again = await store.put(*puts[1])
    assert created.created and not again.created
    assert created.info == again.info
    assert again.info.blob_type is first
    blob_id = parse_blob_id(as_json.blob_id)
    assert (await store.get(blob_id)).info.blob_type is first
    stat = await store.stat(blob_id)
    assert stat is not None and stat.blob_type is first
