"""What the object-store backend relies on, checked on the real SeaweedFS with obstore.

If a SeaweedFS upgrade drops one of these, this file says which guarantee broke
(docs/scale-out.md lists them) before the backend's own tests fail less clearly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import obstore
import pytest
from obstore.exceptions import AlreadyExistsError, NotSupportedError
from obstore.store import S3Store

from tests.seaweedfs import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS

if TYPE_CHECKING:
    from obstore.store import ClientConfig


def _store(weed: SeaweedFS, headers: dict[str, str] | None = None, **config: Any) -> S3Store:
    options: ClientConfig = {"allow_http": True}
    if headers:
        options["default_headers"] = headers
    return S3Store(
        BUCKET,
        endpoint=weed.endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        client_options=options,
        **config,
    )


def _key() -> str:
    return f"features/{uuid.uuid4().hex}"


async def test_credentials_are_required(seaweedfs: SeaweedFS) -> None:
    anonymous = S3Store(
        BUCKET,
        endpoint=seaweedfs.endpoint,
        region=REGION,
        skip_signature=True,
        client_options={"allow_http": True},
        retry_config={"max_retries": 0},
    )
    with pytest.raises(obstore.exceptions.BaseError):
        await obstore.put_async(anonymous, _key(), b"x")


async def test_conditional_put_lets_exactly_one_writer_win(seaweedfs: SeaweedFS) -> None:
    store, key = _store(seaweedfs), _key()
    results = await asyncio.gather(
        *(obstore.put_async(store, key, b"v%d" % i, mode="create") for i in range(8)),
        return_exceptions=True,
    )
    winners = [i for i, result in enumerate(results) if not isinstance(result, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExistsError) for r in results if isinstance(r, BaseException))
    got = await obstore.get_async(store, key)
    assert bytes(await got.bytes_async()) == b"v%d" % winners[0]


async def test_attributes_round_trip_and_head_get_returns_them(seaweedfs: SeaweedFS) -> None:
    store, key = _store(seaweedfs), _key()
    attributes = {"blob-type": "Json", "Content-Type": "application/json"}
    await obstore.put_async(store, key, b"{}", mode="create", attributes=attributes)
    head = await obstore.get_async(store, key, options={"head": True})
    assert head.meta["size"] == 2
    assert head.attributes == attributes


async def test_multipart_upload_keeps_attributes(seaweedfs: SeaweedFS) -> None:
    store, key = _store(seaweedfs), _key()

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"p" * (5 * 1024 * 1024 + 1)

    await obstore.put_async(
        store, key, parts(), attributes={"blob-type": "Binary"}, chunk_size=5 * 1024 * 1024
    )
    head = await obstore.get_async(store, key, options={"head": True})
    assert head.meta["size"] == 3 * (5 * 1024 * 1024 + 1)
    assert head.attributes["blob-type"] == "Binary"


async def test_copy_if_not_exists_with_replaced_metadata(seaweedfs: SeaweedFS) -> None:
    """The streamed put's publish step: copy a temporary to its final key, only if absent,
    with the metadata known at commit (x-amz-metadata-directive: REPLACE)."""
    plain, source, target = _store(seaweedfs), _key(), _key()
    with pytest.raises(NotSupportedError):  # not without a copy_if_not_exists setting
        await obstore.copy_async(plain, source, target, overwrite=False)
    await obstore.put_async(plain, source, b"content", attributes={"blob-type": "Binary"})
    replace = {"x-amz-metadata-directive": "REPLACE"}
    publishing = _store(
        seaweedfs,
        copy_if_not_exists="header:If-None-Match:*",
        headers={**replace, "x-amz-meta-blob-type": "Json"},
    )
    await obstore.copy_async(publishing, source, target, overwrite=False)
    with pytest.raises(AlreadyExistsError):
        await obstore.copy_async(publishing, source, target, overwrite=False)
    got = await obstore.get_async(plain, target)
    assert bytes(await got.bytes_async()) == b"content"
    assert got.attributes["blob-type"] == "Json"
