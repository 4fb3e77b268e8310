"""The client side of BatchPut and BatchGet: splitting batches, building requests, reading replies.

Shared by BlobClient and AsyncBlobClient (client.py), which only make the calls.
A client batch of any length is split into requests the server takes: at most
MAX_ITEMS items and about REQUEST_BYTES of content each; a blob too large for a
unary message is left to the caller's streamed put. Each item of a reply is
its result or its own error (blobstore.errors, decoded through status.py's
table), and every blob read is checked against its id here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.errors import BlobStoreError, DataLoss
from blobstore.ids import BlobId, hex_digest
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.proto_names import BLOB_TYPE_FROM_PB, BLOB_TYPE_TO_PB, meta_from_pb, meta_to_pb
from blobstore.status import from_item_error

MAX_ITEMS = 1000
"""Most items in one request: the server's default --max-batch-items."""
REQUEST_BYTES = 4 * 1024 * 1024
"""Content bytes a request is filled up to (a single larger item goes alone)."""


@dataclass(frozen=True, slots=True)
class NewBlob:
    """One blob of a put_many: its content (raw bytes, or JSON text for Json and Flow)."""

    data: bytes
    blob_type: BlobType = BlobType.BINARY
    meta: BlobMeta = NO_META


PutOutcome = PutResult | BlobStoreError
GetOutcome = Blob | BlobStoreError


def put_groups(items: Sequence[NewBlob], unary_limit: int) -> Iterator[list[int]]:
    """Indexes of `items`, grouped into requests; items over `unary_limit` alone (streamed)."""
    group: list[int] = []
    size = 0
    for index, item in enumerate(items):
        if len(item.data) > unary_limit:
            yield [index]
            continue
        if group and (len(group) >= MAX_ITEMS or size + len(item.data) > REQUEST_BYTES):
            yield group
            group, size = [], 0
        group.append(index)
        size += len(item.data)
    if group:
        yield group


def get_groups(count: int) -> Iterator[range]:
    """Indexes of `count` ids, in requests of at most MAX_ITEMS."""
    for start in range(0, count, MAX_ITEMS):
        yield range(start, min(count, start + MAX_ITEMS))


def put_request(items: Sequence[NewBlob]) -> pb.BatchPutRequest:
    return pb.BatchPutRequest(
        requests=[
            pb.PutRequest(
                blob_type=BLOB_TYPE_TO_PB[item.blob_type], data=item.data, **meta_to_pb(item.meta)
            )
            for item in items
        ]
    )


def put_outcomes(reply: pb.BatchPutResponse, expected: int) -> list[PutOutcome]:
    _check_count(len(reply.results), expected)
    outcomes: list[PutOutcome] = []
    for result in reply.results:
        if result.HasField("error"):
            outcomes.append(from_item_error(result.error))
        else:
            response = result.response
            info = _info(response)
            outcomes.append(PutResult(info, response.created))
    return outcomes


def get_outcomes(reply: pb.BatchGetResponse, ids: Sequence[BlobId]) -> list[GetOutcome]:
    """Each blob (checked against its id) or its error."""
    _check_count(len(reply.results), len(ids))
    outcomes: list[GetOutcome] = []
    for blob_id, result in zip(ids, reply.results, strict=True):
        if result.HasField("error"):
            outcomes.append(from_item_error(result.error))
            continue
        response = result.response
        if response.id != blob_id or hashlib.sha256(response.data).hexdigest() != hex_digest(
            blob_id
        ):
            outcomes.append(DataLoss(blob_id, "the received content does not match its id"))
            continue
        outcomes.append(Blob(_info(response), response.data))
    return outcomes


def _info(reply: pb.PutResponse | pb.GetResponse) -> BlobInfo:
    return BlobInfo(
        BlobId(reply.id), BLOB_TYPE_FROM_PB[reply.blob_type], reply.size, meta_from_pb(reply)
    )


def _check_count(got: int, expected: int) -> None:
    if got != expected:
        raise DataLoss(
            "", message=f"the batch reply has {got} results for {expected} items; not used"
        )
