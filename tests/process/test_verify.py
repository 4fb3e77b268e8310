"""`blobstore verify` and verify_store(): real corrupted files, found while a server runs.

The damage is done to the files on disk (a flipped content byte, a truncated file, a
broken header, an appended byte, a stray file) while a server serves the folder and
clients keep putting blobs, so puts in progress must not be mistaken for damage.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from blobstore.errors import BlobNotFound
from blobstore.storage.filesystem.scrub import NotADataFolder, verify_store
from tests.faults import EXIT_CORRUPT, stored_files, verify_cli
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[-1] ^= 0x01
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    elif how == "header":
        raw[9] ^= 0xFF  # inside the length field, so the header's CRC fails
    elif how == "append":
        raw += b"!"
    path.write_bytes(bytes(raw))


class _Writer(threading.Thread):
    """Keeps putting fresh blobs (some streamed) until stopped."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self._target = target
        self.stop = threading.Event()
        self.stored: dict[str, bytes] = {}
        self.start()

    def run(self) -> None:
        with BlobClient(self._target, timeout=60) as client:
            n = 0
            while not self.stop.is_set() and n < 2000:
                data = os.urandom(5 * MiB if n % 10 == 0 else 20_000)
                self.stored[client.put_bytes(data).info.blob_id] = data
                n += 1


def test_verify_finds_and_quarantines_damage_while_the_server_runs(
    server: ServerProcess, client: BlobClient
) -> None:
    originals = [os.urandom(50_000 + i) for i in range(12)]
    ids = [client.put_bytes(data).info.blob_id for data in originals]
    ids.append(client.put_json({"doc": list(range(100))}).info.blob_id)
    ids.append(client.put_bytes(os.urandom(6 * MiB)).info.blob_id)  # streamed in
    damaged = {ids[0]: "flip", ids[1]: "truncate", ids[2]: "header", ids[3]: "append"}
    paths = {"sha256:" + p.name: p for p in stored_files(server.data_dir)}
    for blob_id, how in damaged.items():
        _damage(paths[blob_id], how)
    stray = paths[ids[4]].parent / "not-a-blob"
    stray.write_bytes(b"left by someone")

    writer = _Writer(server.target)
    try:
        done = verify_cli(server.data_dir)
    finally:
        writer.stop.set()
        writer.join(60)
    assert done.returncode == EXIT_CORRUPT, done.stdout + done.stderr
    reported = {
        line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line[:4] == "BAD "
    }
    assert reported == {*damaged, str(stray)}
    assert "5 bad" in done.stdout

    # The bad copies are aside (kept for analysis), the stray too; nothing else moved.
    quarantine = {p.name.split(".")[0] for p in (server.data_dir / "quarantine").iterdir()}
    assert quarantine == {i.removeprefix("sha256:") for i in damaged} | {"not-a-blob"}
    for blob_id in damaged:
        with pytest.raises(BlobNotFound):
            client.get(blob_id)
    for blob_id in ids[4:]:
        assert client.get(blob_id).info.blob_id == blob_id
    for written, data in writer.stored.items():
        assert client.get(written).data == data
    assert writer.stored, "the concurrent writer stored nothing"

    # Putting the lost content again heals the store; a second run finds nothing.
    for data in originals[:4]:
        assert client.put_bytes(data).created
    again = verify_cli(server.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 bad" in again.stdout


def test_no_quarantine_only_reports(server: ServerProcess, client: BlobClient) -> None:
    blob_id = client.put_bytes(b"soon broken" * 1000).info.blob_id
    path = stored_files(server.data_dir)[0]
    _damage(path, "flip")
    before = path.read_bytes()
    done = verify_cli(server.data_dir, "--no-quarantine")
    assert done.returncode == EXIT_CORRUPT
    assert f"BAD {blob_id}: content does not match its SHA-256 id (left in place)" in done.stdout
    assert path.read_bytes() == before
    assert list((server.data_dir / "quarantine").iterdir()) == []


def test_library_call_needs_no_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    with BlobClient(server.target, timeout=30) as blob_client:
        good = blob_client.put_bytes(b"good").info.blob_id
        bad = blob_client.put_bytes(b"bad").info.blob_id
    server.stop()
    _damage(server.data_dir / "blobs" / bad[7:9] / bad[7:], "flip")

    report = verify_store(server.data_dir)
    assert (report.checked, report.bytes_checked) == (1, len(b"good"))
    assert [(p.blob_id, p.reason) for p in report.problems] == [
        (bad, "content does not match its SHA-256 id")
    ]
    moved = report.problems[0].quarantined_to
    assert moved is not None and moved.parent == server.data_dir / "quarantine"
    assert hashlib.sha256(b"good").hexdigest() == good[7:]
    assert verify_store(server.data_dir).ok

    with pytest.raises(NotADataFolder):
        verify_store(tmp_path / "nowhere")
    done = verify_cli(tmp_path / "nowhere")
    assert done.returncode == 1
    assert "not a blobstore data folder" in done.stderr
