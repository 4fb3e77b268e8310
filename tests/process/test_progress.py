"""Progress bars of the CLI (issue 16, point 4): drawn on a terminal, absent otherwise.

`blobstore put`, `get -o` and `verify` run as a user runs them, against a real server,
once with standard error on a pseudo-terminal (the `pty` module), where a bar with
bytes, rate and time left appears, and once piped, and with --quiet on the terminal,
where nothing but the usual output does.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.processes import ServerProcess

# tqdm's bar: "put: 100%|...| 24.0M/24.0M [00:00<00:00, 80.1MB/s]"
BAR = re.compile(
    rb"(put|get|verify): +\d+%\|.*\| [\d.]+[kMG]?i?B?/[\d.]+[kMG]?i?B? \[[\d:]+<[\d:?]+, "
)
SIZE = 24 * 1024 * 1024


def _run(args: list[str], target: str, *, terminal: bool) -> tuple[int, bytes, bytes]:
    """Runs `blobstore ARGS`; stdout piped, stderr on a pty (`terminal`) or piped."""
    env = {**os.environ, "BLOBSTORE_TARGET": target, "COLUMNS": "100"}
    command = [sys.executable, "-m", "blobstore.cli", *args]
    if not terminal:
        done = subprocess.run(command, capture_output=True, env=env, timeout=120)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    # A terminal 100 columns wide, like a user's (a new pty reports 0).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL, env=env
        )
        os.close(follower)
        follower = -1
        seen = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            seen += chunk
        assert proc.stdout is not None
        out = proc.stdout.read()
        return proc.wait(timeout=120), out, bytes(seen)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def test_put_get_verify_show_progress_on_a_terminal(
    server: ServerProcess, big: Path, tmp_path: Path
) -> None:
    code, out, err = _run(["put", str(big)], server.target, terminal=True)
    assert code == 0, err
    blob_id = out.decode().strip()
    assert blob_id.startswith("sha256:")
    assert re.search(rb"put: +100%", err), err[-400:]
    assert BAR.search(err), err[-400:]

    copy = tmp_path / "copy.bin"
    code, out, err = _run(["get", blob_id, "-o", str(copy)], server.target, terminal=True)
    assert code == 0, err
    assert copy.read_bytes() == big.read_bytes()
    assert re.search(rb"get: +100%", err) and BAR.search(err), err[-400:]

    verify = ["verify", "--data-dir", str(server.data_dir)]
    code, out, err = _run(verify, server.target, terminal=True)
    assert code == 0, err
    assert b"checked 1 blob(s)" in out
    assert re.search(rb"verify: +100%", err) and BAR.search(err), err[-400:]


def test_no_progress_when_piped_or_quiet(server: ServerProcess, big: Path, tmp_path: Path) -> None:
    code, out, err = _run(["put", str(big)], server.target, terminal=False)
    assert code == 0 and err == b"", err
    blob_id = out.decode().strip()
    code, out, err = _run(["put", "--quiet", str(big)], server.target, terminal=True)
    assert code == 0 and out.decode().strip() == blob_id
    assert err == b"", err  # nothing at all on the terminal
    copy = tmp_path / "copy.bin"
    code, out, err = _run(["get", blob_id, "-o", str(copy)], server.target, terminal=False)
    assert code == 0 and err == b"" and copy.stat().st_size == SIZE
    code, out, err = _run(["get", "-q", blob_id, "-o", str(copy)], server.target, terminal=True)
    assert code == 0 and err == b""
    verify = ["verify", "--data-dir", str(server.data_dir)]
    code, out, err = _run(verify, server.target, terminal=False)
    assert code == 0 and err == b"" and b"checked 1 blob(s)" in out
    code, out, err = _run([*verify, "--quiet"], server.target, terminal=True)
    assert code == 0 and err == b""
