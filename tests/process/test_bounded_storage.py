"""Bounded storage on real servers: the cap, LRU eviction, --min-age, Delete, Prune.

Each test runs `blobstore serve` processes on real folders and talks gRPC to them;
crash tests kill them with SIGKILL and start them again on the same folder. Small
puts (up to 64 KiB) take the group-commit journal, whose records a replay would
restore: the crash tests prove that nothing removed comes back that way.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.retry import RetryPolicy
from blobstore.storage.filesystem.packs.compact import SEAL_DEAD_BYTES
from tests.metrics_scrape import free_port, scrape, value
from tests.processes import ServerProcess
from tests.rpc_helpers import wait_until

HEADER = 20  # blob_file.HEADER_SIZE: what a blob file holds besides its content (no metadata)


def content(seed: int, size: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


def stored_bytes_on_disk(data_dir: Path) -> int:
    return sum(p.stat().st_size - HEADER for p in (data_dir / "blobs").glob("??/*"))


def client_of(server: ServerProcess, token: str | None = None, *, retry: bool = True) -> BlobClient:
    creds = channel_credentials(token=token) if token else None
    policy = None if retry else RetryPolicy.off()
    return BlobClient(server.target, timeout=60, credentials=creds, retry=policy)


def present(client: BlobClient, ids: Sequence[str]) -> set[str]:
    missing: set[str] = set()
    for start in range(0, len(ids), 5000):
        missing |= set(client.find_missing(ids[start : start + 5000]))
    return set(ids) - missing


@pytest.mark.parametrize("small", ["files", "packs"])
def test_fill_to_three_times_the_cap_keeps_the_cap_the_hot_set_and_young_blobs(
    start_server: Callable[..., ServerProcess], tmp_path: Path, small: str
) -> None:
    cap, min_age = 3 << 20, 1.5
    port = free_port()
    server = start_server(
        *("--max-bytes", str(cap), "--min-age", str(min_age), "--metrics-port", str(port)),
        *("--small-blob-store", small),
    )
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    stop = threading.Event()
    failures: list[str] = []
    acked: dict[str, float] = {}  # id -> when its put was acknowledged (client clock)
    acked_lock = threading.Lock()

    with client_of(server) as setup:
        hot = [setup.put_bytes(content(10**6 + i, 4096)).info.blob_id for i in range(8)]

    def read_hot() -> None:
        with client_of(server) as reader:
            while not stop.is_set():
                for blob_id in hot:
                    try:
                        reader.get(blob_id)  # verified by the server and the client
                    except Exception as exc:
                        failures.append(f"hot {blob_id}: {exc!r}")
                time.sleep(0.02)

    def write(worker: int, total: int) -> None:
        rng = random.Random(worker)
        written = seed = 0
        with client_of(server) as writer:
            while written < total and not stop.is_set():
                size = rng.choice([100, 3000, 20_000, 60_000, 150_000, 400_000])
                data = content(worker * 10**6 + seed, size)
                seed += 1
                try:
                    blob_id = writer.put_bytes(data).info.blob_id
                except errors.StorageFull:
                    time.sleep(0.1)  # everything younger than --min-age: wait and retry
                    continue
                with acked_lock:
                    acked[blob_id] = time.time()
                written += size

    def watch() -> None:
        with client_of(server) as checker:
            while not stop.is_set():
                samples = scrape(metrics_url)
                stored = value(samples, "blobstore_storage_stored_bytes")
                if stored > cap:
                    failures.append(f"stored {stored} bytes, over the cap of {cap}")
                now = time.time()
                with acked_lock:
                    young = [b for b, t in acked.items() if now - t < min_age - 0.3]
                gone = set(checker.find_missing(young)) if young else set()
                if gone:
                    failures.append(f"{len(gone)} blob(s) younger than --min-age evicted")
                time.sleep(0.05)

    threads = [threading.Thread(target=read_hot), threading.Thread(target=watch)]
    writers = [threading.Thread(target=write, args=(w, cap * 3 // 2)) for w in range(2)]
    for thread in threads + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=240)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures[:5]

    with client_of(server) as check:
        stored_ids = present(check, list(acked))
        assert len(stored_ids) < len(acked), "3x the cap went in: some blobs must be evicted"
        assert present(check, hot) == set(hot)
        for blob_id in stored_ids:
            blob = check.get(blob_id)  # whole and verified
            assert "sha256:" + hashlib.sha256(blob.data).hexdigest() == blob_id
    if small == "files":
        assert stored_bytes_on_disk(server.data_dir) <= cap
    else:
        # Removed records are dead bytes until compaction drops their segment: at most
        # SEAL_DEAD_BYTES of the active segment and half of each sealed one.
        def within() -> bool:
            packed = sum(p.stat().st_size for p in (server.data_dir / "packs").glob("*"))
            return stored_bytes_on_disk(server.data_dir) + packed <= 2 * cap + SEAL_DEAD_BYTES

        assert wait_until(within, timeout=20)
    samples = scrape(metrics_url)
    assert value(samples, "blobstore_storage_removed_blobs_total", reason="evicted") > 0
    assert "evicted" in server.log()


def test_storage_full_when_nothing_is_evictable_then_room_after_a_delete(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    cap = 1 << 20
    server = start_server("--max-bytes", str(cap), "--min-age", "1h")
    with client_of(server) as client:
        ids = []
        with pytest.raises(errors.StorageFull):
            for seed in range(100):
                ids.append(client.put_bytes(content(seed, 100_000)).info.blob_id)
        assert len(ids) == cap // 100_000
        for blob_id in ids:  # all still there, whole
            assert len(client.get(blob_id).data) == 100_000
        # A larger blob than the whole cap is refused too, streamed or not, leaving nothing.
        big = content(999, cap + 1)
        with pytest.raises(errors.StorageFull):
            client.put_bytes(big)
        streamed = tmp_path / "big.bin"
        streamed.write_bytes(big)
        with pytest.raises(errors.StorageFull):
            client.put_file(streamed)  # PutStream: refused at commit, its temp file dropped
        assert stored_bytes_on_disk(server.data_dir) == 100_000 * len(ids)
        assert list((server.data_dir / "tmp").iterdir()) == []
        assert client.delete(ids[:3]) == ids[:3]
        client.put_bytes(content(1000, 100_000))
    assert server.alive()


def test_put_racing_the_eviction_of_its_id_leaves_a_readable_blob(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-bytes", str(1 << 20))
    raced = content(5, 30_000)
    stop = threading.Event()
    failures: list[str] = []
    with client_of(server) as client:
        raced_id = client.put_bytes(raced).info.blob_id

        def churn() -> None:
            with client_of(server) as writer:
                seed = 10
                while not stop.is_set():
                    writer.put_bytes(content(seed, 50_000))
                    seed += 1

        def put_then_read() -> None:
            with client_of(server) as racer:
                while not stop.is_set():
                    racer.put_bytes(raced)
                    try:
                        if racer.get(raced_id).data != raced:
                            failures.append("different content")
                    except errors.BlobNotFound:
                        failures.append("acknowledged put, then NOT_FOUND")
                    time.sleep(random.uniform(0, 0.05))

        threads = [threading.Thread(target=churn), threading.Thread(target=put_then_read)]
        for thread in threads:
            thread.start()
        time.sleep(8)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures[:5]
    assert "evicted" in server.log()


def test_a_read_in_progress_completes_whole_when_its_blob_is_deleted(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    data = os.urandom(8 << 20)
    with client_of(server) as client:
        blob_id = client.put_bytes(data).info.blob_id
        stub_channel = grpc.insecure_channel(server.target)
        call = pb_grpc.BlobServiceStub(stub_channel).GetStream(
            pb.GetStreamRequest(id=blob_id, chunk_size=64 * 1024)
        )
        replies: Iterator[pb.GetStreamResponse] = iter(call)
        first = next(replies)
        assert first.info.size == len(data)
        received = [next(replies).chunk]
        assert client.delete([blob_id]) == [blob_id]
        with pytest.raises(errors.BlobNotFound):
            client.get(blob_id)
        received += [reply.chunk for reply in replies]  # the open file keeps its content
        assert b"".join(received) == data
        stub_channel.close()
        assert client.delete([blob_id]) == []  # idempotent


def put_small(client: BlobClient, first: int, count: int) -> list[str]:
    return [client.put_bytes(content(seed, 2000)).info.blob_id for seed in range(first, count)]


@pytest.mark.parametrize("small", ["files", "packs"])
def test_kill_after_delete_and_prune_resurrects_nothing_from_the_journal(
    start_server: Callable[..., ServerProcess], tmp_path: Path, small: str
) -> None:
    """Files: removal checkpoints the journal first. Packs: removal appends tombstones."""
    data_dir = tmp_path / "data"
    server = start_server("--small-blob-store", small, data_dir=data_dir)
    log_of_puts = "journal/*.log" if small == "files" else "packs/*.pack"
    with client_of(server) as client:
        old = put_small(client, 0, 200)
        old_done = time.time()
        time.sleep(2.0)
        young = put_small(client, 200, 400)
        assert list(data_dir.glob(log_of_puts)), "small puts go through the journal or packs"
        deleted = client.delete(young[:50] + young[:50] + ["sha256:" + "0" * 64])
        assert deleted == young[:50]
        # Not used since halfway between the old puts and the young ones.
        would, nbytes = client.prune(time.time() - old_done - 1.0, dry_run=True)
        assert set(would) == set(old) and nbytes == 2000 * len(old)
        assert present(client, old) == set(old)
        pruned, _ = client.prune(time.time() - old_done - 1.0)
        assert set(pruned) == set(old)
    server.kill()
    again = start_server("--small-blob-store", small, data_dir=data_dir)
    with client_of(again) as client:
        assert present(client, old + young[:50]) == set()
        kept = young[50:]
        assert present(client, kept) == set(kept)
        for blob_id in kept:
            assert len(client.get(blob_id).data) == 2000


def crash_round(server: ServerProcess, base: int) -> tuple[set[str], list[str]]:
    """Puts past the cap and deletes while it evicts, then SIGKILL: returns what was
    acknowledged gone before the kill, and every put acknowledged."""
    stop = threading.Event()
    gone: set[str] = set()
    acked: list[str] = []

    def churn() -> None:
        with client_of(server, retry=False) as writer:
            seed = base
            while not stop.is_set():
                try:
                    acked.append(writer.put_bytes(content(seed, 20_000)).info.blob_id)
                except errors.BlobStoreError:
                    return  # killed
                seed += 1

    def deleter() -> None:
        with client_of(server, retry=False) as admin:
            while not stop.is_set():
                try:
                    gone.update(admin.delete(acked[-40:-20]))
                except errors.BlobStoreError:
                    return

    threads = [threading.Thread(target=churn), threading.Thread(target=deleter)]
    for thread in threads:
        thread.start()
    # Past the cap (about 50 puts) with deletes done, however slow the machine; then a bit.
    deadline = time.monotonic() + 120
    while (len(acked) < 80 or not gone) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    with client_of(server) as client:
        # What is NOT_FOUND now was removed (evicted or deleted) and acknowledged gone.
        snapshot = list(acked)
        gone |= set(snapshot) - present(client, snapshot)
    server.kill()  # mid-eviction and mid-delete, most likely
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return gone, acked


@pytest.mark.parametrize("small", ["files", "packs"])
def test_kill_mid_delete_and_mid_eviction_then_restart(
    start_server: Callable[..., ServerProcess], tmp_path: Path, small: str
) -> None:
    data_dir = tmp_path / "data"
    store = ("--small-blob-store", small)
    for round_ in range(3):
        server = start_server(*store, "--max-bytes", str(1 << 20), data_dir=data_dir)
        gone, acked = crash_round(server, round_ * 100_000)
        assert gone, f"nothing removed after {len(acked)} puts:\n{server.log()[-3000:]}"
        again = start_server(*store, data_dir=data_dir)  # no cap: nothing is removed after start
        with client_of(again) as client:
            assert present(client, sorted(gone)) == set(), "a removed blob came back"
            for blob_id in present(client, list(dict.fromkeys(acked))):
                assert len(client.get(blob_id).data) == 20_000  # whole and verified
        again.stop()


def test_delete_needs_admin_scope_or_loopback_or_the_flag(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Beyond loopback, without tokens: refused unless --enable-delete.
    open_server = start_server("--address", "0.0.0.0:0", "--allow-unauthenticated")
    with BlobClient(open_server.target, retry=RetryPolicy.off()) as client:
        blob_id = client.put_bytes(b"keep me").info.blob_id
        with pytest.raises(errors.PermissionDenied, match="--enable-delete"):
            client.delete([blob_id])
        with pytest.raises(errors.PermissionDenied):
            client.prune(1.0, dry_run=True)
        assert client.stat(blob_id) is not None
    flagged = start_server(
        "--address",
        "0.0.0.0:0",
        "--allow-unauthenticated",
        "--enable-delete",
        data_dir=tmp_path / "flagged",
    )
    with BlobClient(flagged.target) as client:
        blob_id = client.put_bytes(b"delete me").info.blob_id
        assert client.delete([blob_id]) == [blob_id]

    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"{token_hash('writer-token')} writer read,write\n{token_hash('admin-token')} root admin\n"
    )
    guarded = start_server("--tokens-file", str(tokens), data_dir=tmp_path / "guarded")
    with client_of(guarded, "writer-token") as writer, client_of(guarded, "admin-token") as admin:
        blob_id = writer.put_bytes(b"guarded").info.blob_id
        with pytest.raises(errors.PermissionDenied):
            writer.delete([blob_id])
        assert admin.delete([blob_id]) == [blob_id]
        assert writer.stat(blob_id) is None


def test_last_use_survives_a_restart_and_decides_eviction(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)
    with client_of(server) as client:
        ids = [client.put_bytes(content(seed, 100_000)).info.blob_id for seed in range(10)]
        time.sleep(0.05)
        client.get(ids[0])  # the oldest put, but the most recently used
        found = client.stat_last_used(ids[0])
        assert found is not None and found[1] is not None
        used_0 = found[1]
        assert abs(used_0 - time.time()) < 60
    server.stop()
    assert (data_dir / "usage.snapshot").is_file()
    capped = start_server("--max-bytes", str(1_000_000), data_dir=data_dir)
    with client_of(capped) as client:
        found = client.stat_last_used(ids[0])
        assert found is not None and found[1] == pytest.approx(used_0, abs=1e-3)
        client.put_bytes(content(99, 100_000))  # over 95 %: the evictor takes ids[1] first
        deadline = time.monotonic() + 30
        while client.stat(ids[1]) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.stat(ids[1]) is None
        assert client.stat(ids[0]) is not None
