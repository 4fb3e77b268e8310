"""A multi-node SeaweedFS (one master, three volume servers, a filer, an S3 gateway;
replication 001, fsync): kill -9 of one volume server while writers storm, then every
acknowledged blob reads back, verified, through a replica of ours.

Puts that the store refuses while it notices the dead volume server are not
acknowledged (the writers count them); what matters is that nothing acknowledged is
lost: each object was on two volume servers when the store answered.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from blobstore.errors import BlobStoreError
from tests.processes import ServerProcess
from tests.rpc_helpers import sha256_id
from tests.seaweedfs_cluster import SeaweedCluster

WRITERS = 8


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SeaweedCluster]:
    running = SeaweedCluster(tmp_path / "cluster")
    (tmp_path / "cluster").mkdir()
    running.start()
    yield running
    running.kill()


def test_kill_9_of_a_volume_server_mid_storm_loses_no_acknowledged_blob(
    cluster: SeaweedCluster, tmp_path: Path
) -> None:
    url = cluster.url(f"cluster/{uuid.uuid4().hex}")
    server = ServerProcess(
        tmp_path / "unused", tmp_path / "replica.log", "--storage", url, env=cluster.env
    ).start()
    acknowledged: list[str] = []
    refused: list[BlobStoreError] = []
    crashed: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()
    try:
        client = BlobClient(server.target, timeout=60)

        def write(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while not stop.is_set():
                    data = rng.randbytes(rng.choice([200, 20_000, 300_000, 9_000_000]))
                    try:
                        result = client.put_bytes(data)
                    except BlobStoreError as exc:  # refused: not acknowledged, fine
                        refused.append(exc)
                        continue
                    assert result.info.blob_id == sha256_id(data)
                    with lock:
                        acknowledged.append(result.info.blob_id)
            except BaseException as exc:
                crashed.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        while len(acknowledged) < 60 and time.monotonic() < deadline and not crashed:
            time.sleep(0.05)
        before_kill = len(acknowledged)
        cluster.kill_volume(1)
        while len(acknowledged) < before_kill + 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(120)
        assert crashed == [], crashed[:3]
        assert before_kill >= 60 and len(acknowledged) >= before_kill + 60, (
            before_kill,
            len(acknowledged),
            refused[:3],
        )
        client.close()
        with BlobClient(server.target, timeout=60) as reader:
            for blob_id in acknowledged:
                assert sha256_id(reader.get(blob_id).data) == blob_id
    finally:
        stop.set()
        server.kill()
