"""Start-up time of a server on a folder of many blobs (`scripts/bench.py --startup-blobs N`).

The usage index (storage/usage.py) is rebuilt at every start from a listing of
the folder merged with the snapshot of last uses; issue 15 asks for seconds with
a million blobs. This writes N small blob files straight into a data folder in
the on-disk format (blob_file.py; a put of each through the server would take
far longer and measure something else), then starts `blobstore serve
--max-bytes` on it three times and reports, each time, the seconds until it
listens and the rebuild time it logs:

- cold: no snapshot (as after an upgrade, or a lost snapshot): the folder is
  listed (a stat per file) before the server listens;
- warm: with the snapshot the previous graceful stop wrote: loaded alone, the
  listing compared with it in the background once the server listens (then SIGKILL);
- after-kill: after that SIGKILL (the snapshot of the last graceful stop).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench_procs import python_argv, start_child

from blobstore.model import BlobType
from blobstore.storage.filesystem.blob_file import encode_header

_REBUILT = re.compile(
    r"usage index: (\d+) blob\(s\), (\d+) byte\(s\), "
    r"(?:loaded from its snapshot|rebuilt from the folder) in ([\d.]+) s"
)
_READY = re.compile(r"blobstore gRPC listening on (\S+:\d+)")


def make_folder(data: Path, count: int) -> None:
    """`count` blobs of 8 content bytes each (the seed), straight into data/blobs/."""
    import hashlib

    blobs = data / "blobs"
    for a in "0123456789abcdef":
        for b in "0123456789abcdef":
            (blobs / (a + b)).mkdir(parents=True, exist_ok=True)
    header = encode_header(BlobType.BINARY, 8)
    for seed in range(count):
        content = seed.to_bytes(8, "big")
        digest = hashlib.sha256(content).hexdigest()
        with open(blobs / digest[:2] / digest, "wb") as out:
            out.write(header + content)


def start_once(data: Path, log: Path, label: str) -> dict[str, float]:
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
        timeout=600.0,
    )
    ready = time.monotonic() - started
    text = log.read_text()
    found = _REBUILT.findall(text)
    rebuilt = float(found[-1][2]) if found else float("nan")
    blobs = int(found[-1][0]) if found else 0
    print(
        f"{label}: listening after {ready:.2f} s; index of {blobs} blobs ready in {rebuilt:.2f} s",
        flush=True,
    )
    if label == "warm":
        child.proc.kill()
        child.proc.wait()
    else:
        child.stop()
    return {"listening_s": ready, "index_rebuild_s": rebuilt, "blobs": blobs}


def run(count: int, work_dir: Path | None, results: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="blobstore-startup-", dir=work_dir))
    try:
        data = work / "data"
        began = time.monotonic()
        make_folder(data, count)
        print(f"wrote {count} blob files in {time.monotonic() - began:.1f} s", flush=True)
        os.sync()
        figures = {
            label: start_once(data, work / f"{label}.log", label)
            for label in ("cold", "warm", "after-kill")
        }
        results.write_text(json.dumps({"startup": {"blobs": count, **figures}}, indent=2) + "\n")
        print(f"results written to {results}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
