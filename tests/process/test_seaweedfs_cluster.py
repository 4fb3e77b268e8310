"""A multi-node SeaweedFS (one master, three volume servers, a filer, an S3 gateway;
replication 001, fsync): kill -9 of one volume server while writers storm, then every
acknowledged blob reads back, verified, through a replica of ours.

Puts that the store refuses while it notices the dead volume server are not
acknowledged (the writers count them); what matters is that nothing acknowledged is
lost: each object was on two volume servers when the store answered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from tests.processes import ServerProcess
from tests.rpc_helpers import sha256_id
from tests.seaweedfs_cluster import SeaweedCluster
from tests.storm import WriteStorm

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
    try:
        client = BlobClient(server.target, timeout=60)
        deadline = time.monotonic() + 90
        sizes = [200, 20_000, 300_000, 9_000_000]
        with WriteStorm(client, WRITERS, sizes, tolerate_refusals=True) as storm:
            before_kill = storm.wait_for(60, deadline)
            cluster.kill_volume(1)
            storm.wait_for(before_kill + 60, deadline)
        assert storm.crashed == [], storm.crashed[:3]
        assert before_kill >= 60 and len(storm.acknowledged) >= before_kill + 60, (
            before_kill,
            len(storm.acknowledged),
            storm.refused[:3],
        )
        client.close()
        with BlobClient(server.target, timeout=60) as reader:
            for blob_id in storm.acknowledged:
                assert sha256_id(reader.get(blob_id).data) == blob_id
    finally:
        server.kill()
