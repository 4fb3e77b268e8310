"""Client-side balancing over stateless replicas, and kill -9 of one of them mid-storm.

Three `blobstore serve` processes on one SeaweedFS bucket; one client given all three
(`host:port,host:port,host:port`, gRPC round_robin) and 16 writer threads. One replica
is killed with SIGKILL while they write: the writers carry on (their calls that die with
it are retried, on a survivor), and every acknowledged blob reads back from the survivors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from blobstore.client import BlobClient
from tests.processes import ServerProcess
from tests.rpc_helpers import sha256_id
from tests.seaweedfs import SeaweedFS
from tests.storm import WriteStorm

WRITERS = 16


def _replicas(weed: SeaweedFS, tmp_path: Path, count: int) -> list[ServerProcess]:
    url = weed.url(f"storm/{uuid.uuid4().hex}")
    return [
        ServerProcess(
            tmp_path / f"unused-{n}", tmp_path / f"replica-{n}.log", "--storage", url, env=weed.env
        ).start()
        for n in range(count)
    ]


def _connections_to(server: ServerProcess) -> int:
    """Established client connections to the server's gRPC port (only this test connects)."""
    return sum(
        1
        for conn in psutil.Process(server.pid).net_connections("tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == server.port
    )


def test_one_target_list_spreads_calls_over_every_replica(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    servers = _replicas(seaweedfs, tmp_path, 3)
    try:
        with BlobClient(",".join(s.target for s in servers), timeout=60) as client:
            ids = [client.put_bytes(os.urandom(1000)).info.blob_id for _ in range(12)]
            assert all(client.get(blob_id) for blob_id in ids)
            assert all(_connections_to(server) >= 1 for server in servers)
        # The CLI takes the same list.
        targets = ",".join(s.target for s in servers)
        cli = subprocess.run(
            [sys.executable, "-m", "blobstore.cli", "stat", "--target", targets, ids[0]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0 and ids[0] in cli.stdout, cli.stderr
    finally:
        for server in servers:
            server.kill()


def test_kill_9_of_one_replica_mid_storm_loses_no_acknowledged_blob(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    servers = _replicas(seaweedfs, tmp_path, 3)
    try:
        client = BlobClient(",".join(s.target for s in servers), timeout=60)
        deadline = time.monotonic() + 60
        with WriteStorm(client, WRITERS, [100, 5_000, 60_000, 1_500_000]) as storm:
            before_kill = storm.wait_for(100, deadline)
            servers[1].kill()
            storm.wait_for(before_kill + 100, deadline)
        assert storm.crashed == [], storm.crashed[:3]
        assert before_kill >= 100 and len(storm.acknowledged) >= before_kill + 100
        client.close()
        survivors = [servers[0], servers[2]]
        with BlobClient(",".join(s.target for s in survivors), timeout=60) as reader:
            for blob_id in storm.acknowledged:
                assert sha256_id(reader.get(blob_id).data) == blob_id
    finally:
        for server in servers:
            server.kill()
