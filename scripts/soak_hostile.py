"""The hostile side of `soak.py --hostile`: attackers that run next to the normal clients.

A process of its own (soak.py starts it), so that its thousands of calls and
connections do not slow the normal clients' own event loop and gRPC machinery:

    python scripts/soak_hostile.py --target 127.0.0.1:50051 --url http://127.0.0.1:8080/ \
        --seconds 60          # prints its findings as one JSON line

Each attacker loops until the deadline and records what it saw in `Findings`:

* slow connections: silent TCP connections to the server and the bridge, and HTTP
  requests that stop half way through their headers or send a Content-Length far
  larger than their body; reopened as the services close them;
* amplifying JSON: 30 MiB texts of ten million empty arrays (refused before parsing)
  and texts of 300 000 values (parsed in the worker process), over gRPC and the bridge;
* bursts past the cap: 3 000 Stat calls at once on one channel; each must be answered
  or refused OVERLOADED, never CANCELLED;
* unread GetStreams and idle PutStreams, which the server must end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import CHANNEL_OPTIONS
from blobstore.status import reason_of

if TYPE_CHECKING:
    from blobstore.api.blobstore.v1.blobstore_pb2_grpc import BlobServiceAsyncStub

ABSENT = "sha256:" + "0" * 64
AMPLIFYING = b"[" + b"[]," * (10 * 1024 * 1024) + b"[]]"
JSON_HEADERS = {"Content-Type": "application/json"}
MANY_VALUES = b"[" + b"[]," * 300_000 + b"[]]"


@dataclass
class Findings:
    """What the attackers saw; `violations` are outcomes the service must never give."""

    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def saw(self, what: str, allowed: bool = True) -> None:
        self.outcomes[what] += 1
        if not allowed and len(self.violations) < 20:
            self.violations.append(what)


def _outcome(exc: grpc.RpcError) -> str:
    return f"{exc.code().name} {reason_of(exc) or ''}".strip()


async def slow_connections(
    host_ports: list[tuple[str, int]], until: float, found: Findings
) -> None:
    """Keeps 100 silent or half-sent connections open to each address."""

    async def one(host: str, port: int, kind: int) -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                found.saw("slow: connect refused")
                await asyncio.sleep(1)
                continue
            if kind == 1:
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif kind == 2:
                writer.write(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 30000000\r\n\r\n{"
                )
            with contextlib.suppress(OSError):
                await writer.drain()
            try:
                remaining = max(0.1, until - time.monotonic())
                await asyncio.wait_for(reader.read(), remaining)
                found.saw("slow: closed by the service")
            except (TimeoutError, OSError):
                pass
            writer.close()
            await asyncio.sleep(0.5)  # an attacker, not a reconnect storm on our own CPU

    tasks = []
    for host, port in host_ports:
        tasks += [one(host, port, n % 3) for n in range(100)]
    await asyncio.gather(*tasks)


async def amplifying_json(target: str, url: str | None, until: float, found: Findings) -> None:
    async with (
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel,
        aiohttp.ClientSession() as session,
    ):
        stub = pb_grpc.BlobServiceStub(channel)
        body = b'{"jsonrpc":"2.0","id":1,"method":"blobs/put","params":{"data":'
        while time.monotonic() < until:
            for text in (AMPLIFYING, MANY_VALUES):
                try:
                    await stub.Put(
                        pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=text), timeout=60
                    )
                    found.saw("json grpc: stored", text is MANY_VALUES)
                except grpc.RpcError as exc:
                    outcome = _outcome(exc)
                    allowed = outcome in ("RESOURCE_EXHAUSTED BLOB_TOO_LARGE",) or (
                        outcome == "RESOURCE_EXHAUSTED OVERLOADED"
                    )
                    found.saw(f"json grpc: {outcome}", allowed)
                if url is not None:
                    try:
                        async with session.post(
                            url,
                            data=body + text + b"}}",
                            headers={"Content-Type": "application/json"},
                        ) as response:
                            reply = await response.json(content_type=None)
                        error = reply.get("error")
                        code = error["code"] if error else "ok"
                        found.saw(f"json bridge: {code}", code in ("ok", -32006, -32005))
                    except (aiohttp.ClientError, OSError) as exc:
                        found.saw(f"json bridge: {type(exc).__name__}", False)
            await asyncio.sleep(0.5)


async def bursts(target: str, until: float, found: Findings) -> None:
    """3 000 Stat calls at once on a fresh channel, every few seconds."""
    while time.monotonic() < until:
        async with grpc.aio.insecure_channel(target) as channel:
            stub: BlobServiceAsyncStub = pb_grpc.BlobServiceStub(channel)

            async def stat(stub: BlobServiceAsyncStub = stub) -> None:
                try:
                    await stub.Stat(pb.StatRequest(id=ABSENT), timeout=60)
                    found.saw("burst: OK")
                except grpc.RpcError as exc:
                    outcome = _outcome(exc)
                    found.saw(f"burst: {outcome}", outcome == "RESOURCE_EXHAUSTED OVERLOADED")

            await asyncio.gather(*(stat() for _ in range(3000)))
        await asyncio.sleep(3)


async def idle_streams(target: str, until: float, found: Findings) -> None:
    """Unread GetStreams of a 4 MiB blob and PutStreams that stop sending."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        blob = await stub.Put(pb.PutRequest(data=os.urandom(4 * 1024 * 1024)), timeout=60)
        while time.monotonic() < until:
            calls = []
            for _ in range(20):
                call = stub.GetStream(pb.GetStreamRequest(id=blob.id), timeout=600)
                calls.append(call)
                with contextlib.suppress(grpc.RpcError):
                    await call.read()

            async def silent() -> AsyncIterator[pb.PutStreamRequest]:
                yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, chunk=b"x" * 1000)
                await asyncio.sleep(max(0.0, until - time.monotonic()) + 600)

            put = stub.PutStream(silent(), timeout=600)
            remaining = max(0.1, until - time.monotonic())
            try:
                await asyncio.wait_for(put, remaining)
            except grpc.RpcError as exc:
                found.saw(f"idle put: {_outcome(exc)}", exc.code() == grpc.StatusCode.UNAVAILABLE)
            except TimeoutError:
                break
            for call in calls:
                call.cancel()


async def run(target: str, url: str | None, until: float) -> Findings:
    found = Findings()
    host, port = target.rsplit(":", 1)
    addresses = [(host, int(port))]
    if url is not None:
        bridge = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        addresses.append((bridge[0], int(bridge[1])))
    await asyncio.gather(
        slow_connections(addresses, until, found),
        amplifying_json(target, url, until, found),
        bursts(target, until, found),
        idle_streams(target, until, found),
    )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description="attackers for soak.py --hostile")
    parser.add_argument("--target", required=True)
    parser.add_argument("--url")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    found = asyncio.run(run(args.target, args.url, time.monotonic() + args.seconds))
    print(json.dumps({"outcomes": dict(found.outcomes), "violations": found.violations}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
