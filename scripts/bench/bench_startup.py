"""Start-up time of a server on a folder of many blobs (`scripts/bench.py --startup-blobs N`).

The usage index (storage/usage.py) is rebuilt at every start from a listing of
the folder merged with the snapshot of last uses; issue 15 asks for seconds with
a million blobs. This writes N small blob files straight into a data folder, in
the store's own layout and format (layout.py's FileSystemLayout makes the shards
and names each blob's path, blob_file.py encodes its header: nothing of either is
spelled out here), from a few threads (the system calls release the GIL; a put of
each through the server would take far longer and measure something else). Then it
starts `blobstore serve --max-bytes` on it three times and reports, each time, the
seconds until it listens, the server's CPU time by then (what a busy machine does
not stretch), the index time it logs, and the server's memory:

- startup_no_snapshot: no snapshot (as after an upgrade, or a lost snapshot): the
  folder is listed (a stat per file) before the server listens; then a graceful
  stop, which writes the snapshot;
- startup_snapshot: with that snapshot: loaded alone, the listing compared with it
  in the background once the server listens (timed too); a sample of blobs is read
  back over gRPC (the server checks each against its id); then SIGKILL;
- startup_after_kill: after that SIGKILL (the snapshot of the last graceful stop).

The files were just written, so the folder's entries are in the page cache: these
are warm-cache figures (a cold cache adds the disk's reads of the folders).
With `--keep` the folder is kept under `--work-dir` and reused by the next run of the
same N (writing a million files takes minutes on a shared machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from bench_procs import Child, python_argv, start_child

from blobstore.client import BlobClient
from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.model import BlobType
from blobstore.storage.filesystem.blob_file import encode_header
from blobstore.storage.filesystem.layout import FileSystemLayout

_INDEXED = re.compile(
    r"usage index: (\d+) blob\(s\), (\d+) byte\(s\), "
    r"(?:loaded from its snapshot|rebuilt from the folder) in ([\d.]+) s"
)
_CHECKED = re.compile(r"usage index checked against (\d+) stored blob\(s\) in ([\d.]+) s")
_READY = re.compile(r"blobstore gRPC listening on (\S+:\d+)")
_WRITERS = 4
_CHUNK = 10_000
_SAMPLE = 200
_COMPLETE = ".bench-startup-complete"


def content_of(seed: int) -> bytes:
    return seed.to_bytes(8, "big")


def blob_id_of(seed: int) -> BlobId:
    return blob_id_from_digest(hashlib.sha256(content_of(seed)).hexdigest())


def make_folder(data: Path, count: int) -> None:
    """`count` Binary blobs of 8 content bytes each (the seed), published as the server
    would (without its fsyncs: os.sync() once at the end)."""
    layout = FileSystemLayout(data)
    data.mkdir(parents=True, exist_ok=True)
    layout.create()
    header = encode_header(BlobType.BINARY, 8)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

    def write(start: int) -> None:
        for seed in range(start, min(start + _CHUNK, count)):
            content = content_of(seed)
            path = layout.blob_path(blob_id_of(seed))
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                continue  # a run interrupted before: the same seed, the same file
            try:
                os.write(fd, header + content)
            finally:
                os.close(fd)

    began = time.monotonic()
    with ThreadPoolExecutor(_WRITERS) as pool:
        for done, _ in enumerate(pool.map(write, range(0, count, _CHUNK)), 1):
            if done % 20 == 0:
                rate = done * _CHUNK / (time.monotonic() - began)
                print(f"  {done * _CHUNK} files written ({rate:.0f}/s)", flush=True)
    os.sync()
    (data / _COMPLETE).write_text(str(count))


def remove_folder(work: Path) -> None:
    """rmtree, the shards' files first from a few threads (one unlink at a time took
    2 ms on the shared machine's disk: half an hour for a million)."""
    blobs = FileSystemLayout(work / "data").shards()

    def empty(shard: str) -> None:
        with contextlib.suppress(OSError), os.scandir(shard) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    with ThreadPoolExecutor(_WRITERS * 2) as pool:
        list(pool.map(empty, blobs))
    shutil.rmtree(work, ignore_errors=True)


def start_server(data: Path, log: Path) -> tuple[Child, float]:
    started = time.monotonic()
    child = start_child(
        "blobstore server",
        python_argv(
            "-m",
            "blobstore.cli",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
            "--max-bytes",
            str(1 << 40),
        ),
        cpus=None,
        log_path=log,
        ready=_READY,
        env={},
        timeout=900.0,
    )
    return child, time.monotonic() - started


def figures(child: Child, listening: float) -> dict[str, float]:
    found = _INDEXED.findall(child.log())
    if not found:
        raise RuntimeError(f"the server logged no usage index line:\n{child.log()}")
    blobs, nbytes, seconds = found[-1]
    process = psutil.Process(child.proc.pid)
    rss, cpu = process.memory_info().rss, process.cpu_times()
    return {
        "listening_s": round(listening, 2),
        "cpu_s": round(cpu.user + cpu.system, 2),
        "index_s": float(seconds),
        "blobs": int(blobs),
        "bytes": int(nbytes),
        "rss_mib": round(rss / (1 << 20), 1),
    }


def check_sample(address: str, count: int) -> int:
    """Reads back a sample of the blobs over gRPC (the server verifies each against its id)."""
    seeds = random.Random(15).sample(range(count), min(_SAMPLE, count))
    with BlobClient(address, timeout=60.0) as client:
        for seed in seeds:
            blob = client.get(blob_id_of(seed))
            if blob.data != content_of(seed) or blob.info.blob_type != BlobType.BINARY:
                raise RuntimeError(f"blob of seed {seed} read back wrong")
    return len(seeds)


def wait_for(child: Child, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(child.log())
        if match:
            return match
        if child.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"the server never logged {pattern.pattern!r}:\n{child.log()}")


def measure(data: Path, logs: Path, count: int) -> dict[str, dict[str, float]]:
    (data / "usage.snapshot").unlink(missing_ok=True)
    rows: dict[str, dict[str, float]] = {}

    child, listening = start_server(data, logs / "no-snapshot.log")
    try:
        rows["startup_no_snapshot"] = figures(child, listening)
        began = time.monotonic()
        child.stop(timeout=600.0)
        rows["startup_no_snapshot"]["stop_s"] = round(time.monotonic() - began, 2)
    finally:
        child.stop()
    if not (data / "usage.snapshot").exists():
        raise RuntimeError(f"the graceful stop wrote no usage snapshot:\n{child.log()}")

    child, listening = start_server(data, logs / "snapshot.log")
    try:
        rows["startup_snapshot"] = figures(child, listening)
        address = child.address
        assert address is not None
        rows["startup_snapshot"]["sample_read"] = check_sample(address, count)
        checked = wait_for(child, _CHECKED, 900.0)
        rows["startup_snapshot"]["listing_checked_s"] = float(checked.group(2))
        child.proc.kill()
        child.proc.wait()
    finally:
        child.stop()

    child, listening = start_server(data, logs / "after-kill.log")
    try:
        rows["startup_after_kill"] = figures(child, listening)
    finally:
        child.stop(timeout=600.0)
    return rows


def table(count: int, rows: dict[str, dict[str, float]]) -> str:
    head = (
        f"{'workload':<26}{'blobs':>10}{'listening s':>13}{'cpu s':>8}{'index s':>10}"
        f"{'RSS MiB':>10}  notes"
    )
    lines = [head, "-" * len(head), f"[start-up on {count} blobs (issue 15)]"]
    for name, row in rows.items():
        notes = []
        if "stop_s" in row:
            notes.append(f"graceful stop {row['stop_s']:.1f} s")
        if "listing_checked_s" in row:
            notes.append(f"listing checked {row['listing_checked_s']:.1f} s after")
        if "sample_read" in row:
            notes.append(f"{row['sample_read']:.0f} blobs read back")
        lines.append(
            f"{name:<26}{row['blobs']:>10.0f}{row['listening_s']:>13.2f}{row['cpu_s']:>8.2f}"
            f"{row['index_s']:>10.2f}"
            f"{row['rss_mib']:>10.1f}  {'; '.join(notes)}"
        )
    return "\n".join(lines)


def run(count: int, work_dir: Path | None, results: Path, keep: bool = False) -> int:
    if keep:
        work = (work_dir or Path(tempfile.gettempdir())) / f"blobstore-startup-{count}"
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="blobstore-startup-", dir=work_dir))
    data = work / "data"
    try:
        if (data / _COMPLETE).exists():
            print(f"reusing the {count} blob files in {data}", flush=True)
        else:
            began = time.monotonic()
            make_folder(data, count)
            print(f"wrote {count} blob files in {time.monotonic() - began:.1f} s", flush=True)
        load = os.getloadavg()
        rows = measure(data, work, count)
        print(table(count, rows), flush=True)
        print(f"load average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f}", flush=True)
        results.write_text(
            json.dumps({"startup": {"blobs": count, "load_before": load, **rows}}, indent=2) + "\n"
        )
        print(f"results written to {results}", flush=True)
    finally:
        if not keep:
            print(f"removing {work}", flush=True)
            remove_folder(work)
    return 0
