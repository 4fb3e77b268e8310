"""A group commit of any size (issue 10, point 2): one batch of 1,500 small puts.

A batch of n puts is 3n pieces for one writev(2), which takes at most IOV_MAX
(1024): the code before issue 10 failed every put of a batch of more than 341
with UNAVAILABLE "Invalid argument", and logged nothing. A slow fdatasync makes
such batches (puts queue while the committer waits); here the data folder is on
a loop-mounted ext4 that the test freezes (fsfreeze, root only; skipped
otherwise) while 1,500 concurrent puts queue, then thaws, and kill -9 follows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.faults import status_of
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB, sha256_id


@pytest.fixture
def freezable_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB ext4 on a loop device; skipped where that cannot be mounted (not root)."""
    if os.geteuid() != 0 or shutil.which("fsfreeze") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root, fsfreeze(8) and mkfs.ext4(8)")
    image, mount = tmp_path / "fs.img", tmp_path / "fs"
    mount.mkdir()
    with open(image, "wb") as sparse:
        sparse.truncate(256 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    done = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mount)], check=False)


PUTS = 1500
"""Far past the 341 puts of 1024 iovecs (three per journal record) that one writev takes."""


def _fsfreeze(flag: str, mount: Path) -> None:
    subprocess.run(["fsfreeze", flag, str(mount)], check=True, timeout=60)


async def _frozen_burst(server: ServerProcess, mount: Path) -> list[str]:
    contents = [os.urandom(1024) for _ in range(PUTS)]
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        await stub.Put(pb.PutRequest(data=b"warm"), timeout=30)
        # A frozen file system stops the committer's write: every put queues behind it,
        # as behind a slow fdatasync under other write load.
        await asyncio.to_thread(_fsfreeze, "-f", mount)
        try:

            async def put(content: bytes) -> pb.PutResponse:
                while True:
                    try:
                        return await stub.Put(pb.PutRequest(data=content), timeout=120)
                    except grpc.aio.AioRpcError as exc:
                        # Refused while a probe held a slot: refused at once, as promised;
                        # sent again, so that in the end every put waits in the store.
                        if status_of(exc)[1] != "OVERLOADED":
                            raise
                    await asyncio.sleep(0.01)

            calls = [asyncio.create_task(put(content)) for content in contents]
            probe = pb.StatRequest(id=sha256_id(b"probe"))

            async def all_admitted() -> bool:
                try:
                    await stub.Stat(probe, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return bool(exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
                return False

            # The cap is PUTS: a probe refused means every put is admitted and waits
            # behind the frozen write (one put per task, each sent until admitted).
            refusals = 0
            for _ in range(6000):
                refusals = refusals + 1 if await all_admitted() else 0
                if refusals >= 5:
                    break
                await asyncio.sleep(0.01)
            assert refusals >= 5, "the puts never filled the concurrency cap"
        finally:
            await asyncio.to_thread(_fsfreeze, "-u", mount)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        ids = []
        for outcome in outcomes:
            assert isinstance(outcome, pb.PutResponse), f"a put failed: {outcome}"
            ids.append(outcome.id)
    assert ids == [sha256_id(content) for content in contents]
    return ids


def test_a_group_commit_of_1500_puts_succeeds(
    freezable_fs: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(
        "--max-concurrent-rpcs",
        str(PUTS),
        "--max-streams-per-connection",
        "0",  # all 1,500 on the test's one connection at once
        data_dir=freezable_fs / "data",
    )
    ids = asyncio.run(_frozen_burst(server, freezable_fs))
    with BlobClient(server.target, timeout=30) as client:
        for blob_id in ids[:: PUTS // 50]:
            assert client.get(blob_id).info.blob_type is BlobType.BINARY
    # ...and after kill -9 the journal brings back every one of them.
    server.kill()
    again = ServerProcess(server.data_dir, server.log_path.with_suffix(".2.log")).start()
    try:
        with BlobClient(again.target, timeout=30) as client:
            assert all(client.stat(blob_id) is not None for blob_id in ids)
    finally:
        again.kill()
    assert "Traceback" not in server.log()
