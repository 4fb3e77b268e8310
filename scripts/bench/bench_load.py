"""The load generator: closed loops of concurrent callers (gRPC, HTTP) in one asyncio process.

Requests are built cheaply (a byte template per JSON document, protobuf
messages serialised once where they repeat) and replies are taken as raw
bytes without decoding, so the load generator spends as little CPU per call
as Python allows, and exactly the same on the echo server and on ours.
Correctness of the replies is checked outside the timed loops (see
bench.py's preflight).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import aiohttp
import grpc
import orjson
from bench_procs import cpu_seconds
from bench_stats import Trial
from google.protobuf import json_format, struct_pb2

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.stepflow.v1 import blobs_pb2 as stepflow_pb
from blobstore.canonical_json import canonicalize_text
from blobstore.client import CHANNEL_OPTIONS

KIB = 1024
MIB = 1024 * KIB
CHUNK = MIB
_SERVICE = "/blobstore.v1.BlobService/"
_STEPFLOW_SERVICE = "/stepflow.v1.BlobService/"
_SEQ_SLOT = b"@" * 12  # where a document's 12-digit sequence number goes
_JSON_HEADERS = {"Content-Type": "application/json"}

Op = Callable[[int], Awaitable[object]]


class LoadError(Exception):
    """A call failed during a timed run: the figures would be meaningless."""


# -- requests --------------------------------------------------------------------------


class Documents:
    """Distinct JSON documents whose canonical form is exactly `size` bytes.

    Each is an order-like record written the way json.dumps writes it (key
    order as built, spaces after separators), so the server has real
    canonicalisation to do; only a 12-digit sequence number differs.
    """

    def __init__(self, size: int = KIB) -> None:
        self.nonce = secrets.token_hex(4)
        doc: dict[str, Any] = {
            "run": self.nonce,
            "seq": "@SEQ@",
            "kind": "order",
            "status": "accepted",
            "customer": {"name": "Ada Lovelace", "email": "ada@example.org", "tier": 3},
            "items": [
                {"sku": f"SKU-{n:04d}", "qty": n % 5 + 1, "price": 9.99 + n, "gift": n % 2 == 0}
                for n in range(6)
            ],
            "total": 1234.5,
            "currency": "EUR",
            "tags": ["bench", "blobstore", "json", "1kib"],
            "created": "2024-01-15T10:30:00Z",
            "note": "",
        }
        self.size = size
        pad = size - len(canonicalize_text(orjson.dumps(doc).replace(b"@SEQ@", b"0" * 12)))
        if pad < 0:
            raise ValueError(f"documents cannot be as small as {size} bytes")
        doc["note"] = "n" * pad
        text = _json_dumps_default(doc)
        self._prefix, self._suffix = text.split(b"@SEQ@")
        # The same document as a Stepflow worker sends it: a PutBlobRequest whose
        # json_data is a google.protobuf.Value, serialised once with a 12-byte slot.
        value = json_format.Parse(text.replace(b"@SEQ@", _SEQ_SLOT), struct_pb2.Value())
        blob = stepflow_pb.PutBlobRequest(json_data=value, blob_type="data").SerializeToString()
        self._blob_prefix, self._blob_suffix = blob.split(_SEQ_SLOT)

    def text(self, seq: int) -> bytes:
        return self._prefix + b"%012d" % seq + self._suffix

    def put_request(self, seq: int) -> bytes:
        return pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=self.text(seq)).SerializeToString()

    def put_blob_request(self, seq: int) -> bytes:
        """stepflow.v1 PutBlobRequest of the document `text(seq)` holds."""
        return self._blob_prefix + b"%012d" % seq + self._blob_suffix

    def batch_put_request(self, seq: int, items: int) -> bytes:
        """BatchPutRequest of `items` documents from seq*items on (each a new blob)."""
        first = seq * items
        return b"".join(_field(1, self.put_request(n)) for n in range(first, first + items))

    def bridge_put_body(self, seq: int) -> bytes:
        return (
            b'{"jsonrpc":"2.0","id":%d,"method":"blobs/put","params":{"data":%s,"blob_type":"Json"}}'
            % (
                seq,
                self.text(seq),
            )
        )


def _json_dumps_default(value: object) -> bytes:
    return json.dumps(value).encode()


def get_request(blob_id: str) -> bytes:
    return pb.GetRequest(id=blob_id).SerializeToString()


def batch_get_request(blob_ids: list[str]) -> bytes:
    return pb.BatchGetRequest(ids=blob_ids).SerializeToString()


def _field(number: int, message: bytes) -> bytes:
    """A length-delimited protobuf field (an embedded message)."""
    return _varint(number << 3 | 2) + _varint(len(message)) + message


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def get_blob_request(blob_id: str) -> bytes:
    """stepflow.v1 GetBlobRequest: the bare hex id."""
    return stepflow_pb.GetBlobRequest(blob_id=blob_id.removeprefix("sha256:")).SerializeToString()


def bridge_get_body(seq: int, blob_id: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"method":"blobs/get","params":{"blob_id":"%s"}}' % (
        seq,
        blob_id.encode(),
    )


class LargeBlobs:
    """Binary blobs of `size` bytes, each distinct, as pre-serialised PutStream messages.

    Only the first chunk differs between blobs, so the rest is built once and
    memory stays at about twice `size` however many blobs are made.
    """

    def __init__(self, size: int, chunk: int = CHUNK) -> None:
        self.size = size
        self._chunk = chunk
        self._base = os.urandom(min(size, chunk))
        self._body = os.urandom(max(0, size - chunk))
        self._rest = [
            pb.PutStreamRequest(chunk=self._body[i : i + chunk]).SerializeToString()
            for i in range(0, len(self._body), chunk)
        ]
        self._head = pb.PutStreamRequest(
            blob_type=pb.BLOB_TYPE_BINARY, total_size=size
        ).SerializeToString()

    def messages(self, unique: bytes) -> list[bytes]:
        first = unique + self._base[len(unique) :]
        return [self._head, pb.PutStreamRequest(chunk=first).SerializeToString(), *self._rest]

    def content(self, unique: bytes) -> bytes:
        """The blob the messages for `unique` carry (for checks outside the timed runs)."""
        return unique + self._base[len(unique) :] + self._body


def endless_blob(size: int, unique: bytes, chunk: int = CHUNK) -> Iterator[bytes]:
    """PutStream messages for a `size`-byte blob, made as they are sent (constant memory)."""
    base = os.urandom(chunk)
    yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, total_size=size).SerializeToString()
    yield pb.PutStreamRequest(chunk=(unique + base[len(unique) :])[:size]).SerializeToString()
    full = pb.PutStreamRequest(chunk=base).SerializeToString()
    sent = min(chunk, size)
    while sent < size:
        left = size - sent
        yield full if left >= chunk else pb.PutStreamRequest(chunk=base[:left]).SerializeToString()
        sent += min(chunk, left)


# -- gRPC --------------------------------------------------------------------------------


class GrpcCaller:
    """Raw-bytes callables for BlobService's methods (and Stepflow's PutBlob/GetBlob)."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        """`metadata`: sent with every Put and Get (a bearer token, for the tls_* rows)."""
        self.metadata = metadata
        self.channel = (
            grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        )
        self.put = self.channel.unary_unary(_SERVICE + "Put", None, None)
        self.get = self.channel.unary_unary(_SERVICE + "Get", None, None)
        self.put_stream = self.channel.stream_unary(_SERVICE + "PutStream", None, None)
        self.get_stream = self.channel.unary_stream(_SERVICE + "GetStream", None, None)
        self.put_blob = self.channel.unary_unary(_STEPFLOW_SERVICE + "PutBlob", None, None)
        self.get_blob = self.channel.unary_unary(_STEPFLOW_SERVICE + "GetBlob", None, None)
        self.batch_put = self.channel.unary_unary(_SERVICE + "BatchPut", None, None)
        self.batch_get = self.channel.unary_unary(_SERVICE + "BatchGet", None, None)

    async def close(self) -> None:
        await self.channel.close(None)

    async def ready(self, seconds: float = 30.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), seconds)

    async def call_put(self, request: bytes) -> bytes:
        return cast(bytes, await self.put(request, metadata=self.metadata))

    async def call_get(self, request: bytes) -> bytes:
        return cast(bytes, await self.get(request, metadata=self.metadata))

    async def call_batch_put(self, request: bytes) -> bytes:
        return cast(bytes, await self.batch_put(request))

    async def call_batch_get(self, request: bytes) -> bytes:
        return cast(bytes, await self.batch_get(request))

    async def call_put_blob(self, request: bytes) -> bytes:
        return cast(bytes, await self.put_blob(request))

    async def call_get_blob(self, request: bytes) -> bytes:
        return cast(bytes, await self.get_blob(request))

    async def stream_put(self, messages: Iterator[bytes] | list[bytes]) -> bytes:
        return cast(bytes, await self.put_stream(iter(messages)))

    async def stream_get(self, request: bytes) -> int:
        """Reads a whole GetStream and returns the number of message bytes received."""
        received = 0
        call = self.get_stream(request)
        async for message in cast(AsyncIterator[bytes], call):
            received += len(message)
        return received


# -- HTTP (the bridge) -------------------------------------------------------------------


class HttpCaller:
    """JSON-RPC over HTTP POST with keep-alive connections, one per concurrent caller."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, body: bytes) -> Any:
        """Posts one JSON-RPC request; returns its `result` or raises LoadError."""
        async with self.session.post(self.url, data=body, headers=_JSON_HEADERS) as response:
            raw = await response.read()
            if response.status != 200:
                raise LoadError(f"bridge answered HTTP {response.status}: {raw[:300]!r}")
        reply = orjson.loads(raw)
        if "result" not in reply:
            raise LoadError(f"bridge answered an error: {reply.get('error')!r}")
        return reply["result"]


# -- closed loops --------------------------------------------------------------------------


async def closed_loop(
    op: Op,
    *,
    concurrency: int,
    seconds: float,
    payload: int,
    server_pids: list[int],
    sequence: Iterator[int] | None = None,
    items: int = 1,
) -> Trial:
    """Runs `concurrency` callers, each issuing `op` back to back, for `seconds`.

    `items`: blobs per call (a batch); ops and payload count blobs, latencies calls.
    """
    numbers = sequence if sequence is not None else itertools.count()
    latencies: list[float] = []
    record = latencies.append
    perf = time.perf_counter

    async def caller() -> None:
        while perf() < deadline:
            seq = next(numbers)
            t0 = perf()
            await op(seq)
            record(perf() - t0)

    server0, loader0 = cpu_seconds(server_pids), time.process_time()
    start = perf()
    deadline = start + seconds
    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    except grpc.aio.AioRpcError as exc:
        raise LoadError(f"call failed: {exc.code().name}: {exc.details()}") from None
    elapsed = perf() - start
    return Trial(
        ops=len(latencies) * items,
        seconds=elapsed,
        payload_bytes=len(latencies) * payload * items,
        latencies=latencies,
        server_cpu=(cpu_seconds(server_pids) - server0) / elapsed,
        loader_cpu=(time.process_time() - loader0) / elapsed,
    )


async def one_shot(
    op: Callable[[], Awaitable[object]], payload: int, server_pids: list[int]
) -> Trial:
    """Times a single (large) operation."""
    server0, loader0 = cpu_seconds(server_pids), time.process_time()
    start = time.perf_counter()
    try:
        await op()
    except grpc.aio.AioRpcError as exc:
        raise LoadError(f"call failed: {exc.code().name}: {exc.details()}") from None
    elapsed = time.perf_counter() - start
    return Trial(
        ops=1,
        seconds=elapsed,
        payload_bytes=payload,
        latencies=[elapsed],
        server_cpu=(cpu_seconds(server_pids) - server0) / elapsed,
        loader_cpu=(time.process_time() - loader0) / elapsed,
    )


def random_picker(items: list[bytes], seed: int = 5) -> Callable[[], bytes]:
    rng = random.Random(seed)
    return lambda: rng.choice(items)
