"""The `blobstore` command as a user runs it: subprocesses against a real server process.

Client commands (put/get/stat/find-missing): outputs, exit codes (0 ok, 1 error, 3 not
found), clear one-line errors without tracebacks, BLOBSTORE_TARGET. The `serve` command:
BLOBSTORE_ADDRESS / BLOBSTORE_DATA_DIR, its single start-up line, graceful stop on
SIGTERM/SIGINT with an in-flight streamed put finishing while new connections are
refused, and a clear error when the address is taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.canonical_json import canonicalize_text
from blobstore.client import CHANNEL_OPTIONS, BlobClient
from blobstore.errors import Unavailable
from tests.processes import ServerProcess
from tests.rpc_helpers import serve_for_module, sha256_id

ABSENT_ID = "sha256:" + "0" * 64
EXIT_ERROR = 1
EXIT_NOT_FOUND = 3
_START_LINE = re.compile(r"blobstore gRPC listening on (\S+):(\d+); data in (.+)$")


def blobstore(
    *args: str, target: str | None = None, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """Runs `python -m blobstore.cli ARGS`; `target` goes in BLOBSTORE_TARGET as a user would."""
    environ = {**os.environ, **env}
    if target is not None:
        environ["BLOBSTORE_TARGET"] = target
    return subprocess.run(
        [sys.executable, "-m", "blobstore.cli", *args],
        input=stdin,
        capture_output=True,
        env=environ,
        timeout=120,
        check=False,
    )


def assert_clear_error(
    done: subprocess.CompletedProcess[bytes], exit_code: int, *words: str
) -> None:
    """A failing command: the right exit code, one line on stderr naming the problem."""
    err = done.stderr.decode()
    assert done.returncode == exit_code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- client commands --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: the client commands use content of their own (or none),
    and `serve` only tries its address and folder. The tests that stop a server, or read
    its log from the start, start their own (start_server)."""
    yield from serve_for_module(tmp_path_factory)


def test_put_and_get_binary_file(server: ServerProcess, tmp_path: Path) -> None:
    data = bytes(range(256)) + os.urandom(5 * 1024 * 1024)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)

    put = blobstore("put", str(source), target=server.target)
    assert put.returncode == 0, put.stderr
    blob_id = put.stdout.decode().strip()
    assert blob_id == sha256_id(data)

    to_stdout = blobstore("get", blob_id, target=server.target)
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout == data

    output = tmp_path / "copy.bin"
    to_file = blobstore(
        "get", blob_id.removeprefix("sha256:"), "-o", str(output), target=server.target
    )
    assert to_file.returncode == 0, to_file.stderr
    assert output.read_bytes() == data

    stat = blobstore("stat", blob_id, target=server.target)
    assert stat.returncode == 0, stat.stderr
    shown = json.loads(stat.stdout)
    assert shown == {
        "blob_id": blob_id,
        "exists": True,
        "blob_type": "Binary",
        "size": len(data),
    }
    # With -o the content goes to the file, and what was written is said as stat says it.
    assert json.loads(to_file.stdout) == shown
    # --last-used adds the last use (the get above), as an ISO 8601 time in UTC.
    used = blobstore("stat", "--last-used", blob_id, target=server.target)
    with_use = json.loads(used.stdout)
    assert datetime.fromisoformat(with_use.pop("last_used")).tzinfo is not None
    assert with_use == shown


def test_put_json_file_and_stdin_get_canonical_text(server: ServerProcess, tmp_path: Path) -> None:
    text = b'{ "b" : 1e0, "a" : [1.0, "x"] }\n'
    canonical = canonicalize_text(text)
    assert canonical == b'{"a":[1,"x"],"b":1}'
    source = tmp_path / "doc.json"
    source.write_bytes(text)

    from_file = blobstore("put", "--type", "json", str(source), target=server.target)
    assert from_file.returncode == 0, from_file.stderr
    blob_id = from_file.stdout.decode().strip()
    assert blob_id == sha256_id(canonical)

    from_stdin = blobstore(
        "put", "--type", "json", "-", stdin=b'{"b":1,"a":[1,"x"]}', target=server.target
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout.decode().strip() == blob_id

    got = blobstore("get", blob_id, target=server.target)
    assert got.returncode == 0, got.stderr
    assert got.stdout == canonical
    stat = blobstore("stat", blob_id, target=server.target)
    assert json.loads(stat.stdout) == {
        "blob_id": blob_id,
        "exists": True,
        "blob_type": "Json",
        "size": len(canonical),
    }


def test_missing_blob_exits_3(server: ServerProcess, tmp_path: Path) -> None:
    stat = blobstore("stat", ABSENT_ID, target=server.target)
    assert stat.returncode == EXIT_NOT_FOUND
    assert json.loads(stat.stdout) == {"blob_id": ABSENT_ID, "exists": False}

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    got = blobstore("get", ABSENT_ID, "-o", str(out_dir / "never.bin"), target=server.target)
    assert_clear_error(got, EXIT_NOT_FOUND, "not found", ABSENT_ID)
    assert list(out_dir.iterdir()) == [], "a failed get must leave no file, not even a part"


def test_find_missing_prints_absent_ids(server: ServerProcess, tmp_path: Path) -> None:
    stored = BlobClient(server.target, timeout=30).put_bytes(b"present").info.blob_id
    done = blobstore("find-missing", stored, ABSENT_ID, target=server.target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [ABSENT_ID]


@pytest.mark.parametrize(
    ("bad_id", "reason"),
    [
        ("sha256:xyz", "3 characters"),
        ("../../etc/passwd", "invalid blob id"),
        ("sha256:" + "AB" * 32, "lowercase"),
        ("md5:" + "0" * 32, "sha256"),
    ],
)
def test_invalid_id_is_a_clear_error(server: ServerProcess, bad_id: str, reason: str) -> None:
    # Every command validates ids the same way; one bad id is enough to show that.
    commands = ("stat", "get", "find-missing") if bad_id.startswith("..") else ("stat",)
    for command in commands:
        done = blobstore(command, bad_id, target=server.target)
        assert_clear_error(done, EXIT_ERROR, "invalid blob id", reason)
        assert done.stdout == b""


def test_bad_input_and_unreachable_server_are_clear_errors(
    server: ServerProcess, tmp_path: Path
) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_bytes(b'{"a": 1,}')
    assert_clear_error(
        blobstore("put", "--type", "json", str(bad_json), target=server.target),
        EXIT_ERROR,
        "invalid JSON",
        "at byte",
    )
    assert_clear_error(
        blobstore("put", str(tmp_path / "no-such-file"), target=server.target),
        EXIT_ERROR,
        "No such file",
    )
    nobody = f"127.0.0.1:{closed_port()}"
    assert_clear_error(blobstore("stat", ABSENT_ID, target=nobody), EXIT_ERROR, "Unavailable")


def test_target_flag_overrides_environment(server: ServerProcess) -> None:
    nobody = f"127.0.0.1:{closed_port()}"
    done = blobstore("stat", ABSENT_ID, "--target", server.target, target=nobody)
    assert done.returncode == EXIT_NOT_FOUND, done.stderr


def test_console_script_is_installed() -> None:
    found = shutil.which("blobstore", path=str(Path(sys.executable).parent))
    assert found, "the `blobstore` console script is not installed next to the interpreter"
    done = subprocess.run(
        [found, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    for command in ("serve", "put", "get", "stat", "find-missing"):
        assert command in done.stdout


# -- serve --------------------------------------------------------------------


@pytest.fixture
def spawn_serve(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Starts `python -m blobstore.cli serve ARGS` as given (no flags added); kills leftovers."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"serve-{len(procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "blobstore.cli", "serve", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=tmp_path,
            )
        procs.append(proc)
        return proc, log

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} not logged (exit {proc.poll()}):\n{log.read_text()}")


def test_serve_is_configured_by_environment(
    spawn_serve: Callable[..., tuple[subprocess.Popen[bytes], Path]], tmp_path: Path
) -> None:
    port = closed_port()
    data_dir = tmp_path / "env-data"
    proc, log = spawn_serve(BLOBSTORE_ADDRESS=f"127.0.0.1:{port}", BLOBSTORE_DATA_DIR=str(data_dir))
    text = wait_for_log(proc, log, "listening")
    lines = text.strip().splitlines()
    assert len(lines) == 4, (
        f"expected the malloc, connection-cap, security and start-up lines:\n{text}"
    )
    assert "security: TLS off; no bearer tokens" in lines[2]
    match = _START_LINE.search(lines[3])
    assert match, lines[3]
    assert match.groups() == ("127.0.0.1", str(port), str(data_dir.resolve()))

    put = blobstore("put", "-", stdin=b"env configured", target=f"127.0.0.1:{port}")
    assert put.returncode == 0, put.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    # The blob lives in BLOBSTORE_DATA_DIR: a server given that folder by flag has it.
    again = ServerProcess(data_dir, tmp_path / "again.log").start()
    try:
        stat = blobstore("stat", put.stdout.decode().strip(), target=again.target)
        assert stat.returncode == 0, stat.stderr
    finally:
        again.kill()


def test_serve_flags_override_environment(
    spawn_serve: Callable[..., tuple[subprocess.Popen[bytes], Path]], tmp_path: Path
) -> None:
    flag_dir = tmp_path / "flag-data"
    proc, log = spawn_serve(
        "--address",
        "127.0.0.1:0",
        "--data-dir",
        str(flag_dir),
        BLOBSTORE_ADDRESS=f"127.0.0.1:{closed_port()}",
        BLOBSTORE_DATA_DIR=str(tmp_path / "env-data"),
    )
    match = _START_LINE.search(wait_for_log(proc, log, "listening"))
    assert match
    assert match.group(3) == str(flag_dir.resolve())
    assert not (tmp_path / "env-data").exists()


def test_serve_with_bad_setting_in_environment_is_a_usage_error(tmp_path: Path) -> None:
    done = blobstore("serve", BLOBSTORE_IO_THREADS="many", BLOBSTORE_DATA_DIR=str(tmp_path / "d"))
    err = done.stderr.decode()
    assert done.returncode == 2
    assert "Traceback" not in err
    assert "BLOBSTORE_IO_THREADS" in err and "'many'" in err


def test_start_up_lines_say_where_and_how_malloc_was_tuned(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    lines = server.log().strip().splitlines()
    assert len(lines) == 4, server.log()
    assert re.search(r"INFO blobstore\.service\.malloc_tuning: malloc tuning: \S", lines[0]), lines
    assert re.search(r"INFO blobstore: at most \d+ connections", lines[1]), lines
    assert re.search(r"INFO blobstore: security: TLS off; no bearer tokens", lines[2]), lines
    match = _START_LINE.search(lines[3])
    assert match
    assert match.groups() == ("127.0.0.1", str(server.port), str(server.data_dir.resolve()))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully(
    start_server: Callable[..., ServerProcess], signum: signal.Signals
) -> None:
    server = start_server()
    with BlobClient(server.target, timeout=30) as client:
        client.put_bytes(b"before the stop")
    server.signal(signum)
    assert server.wait(60) == 0, server.log()
    log = server.log()
    assert re.search(r"\bstopped$", log, re.MULTILINE), log
    assert "Traceback" not in log


def test_in_flight_streamed_put_finishes_after_sigterm(
    start_server: Callable[..., ServerProcess],
) -> None:
    # Long enough for a loaded machine; the stop itself must not wait for it.
    server = start_server("--grace-seconds", "120")
    chunk_count, chunk_size = 200, 1024 * 1024
    base = os.urandom(chunk_size)
    half_sent, resume = threading.Event(), threading.Event()
    digest = hashlib.sha256()

    def requests() -> Iterator[pb.PutStreamRequest]:
        yield pb.PutStreamRequest(
            blob_type=pb.BLOB_TYPE_BINARY, total_size=chunk_count * chunk_size
        )
        for index in range(chunk_count):
            if index == chunk_count // 2:
                half_sent.set()
                # The stop and the refused connection happen while this call is open.
                if not resume.wait(120):
                    return
            chunk = index.to_bytes(8, "big") + base[8:]
            digest.update(chunk)
            yield pb.PutStreamRequest(chunk=chunk)

    channel = grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS)
    stub = pb_grpc.BlobServiceStub(channel)
    with channel, ThreadPoolExecutor(1) as pool:
        call = pool.submit(stub.PutStream, requests(), timeout=300)
        try:
            assert half_sent.wait(120), "the streamed put did not get going"
            server.signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "stopping" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "stopping" in server.log(), server.log()
            with pytest.raises(Unavailable), BlobClient(server.target, timeout=10) as late:
                late.stat(ABSENT_ID)
        finally:
            resume.set()
        reply = call.result(timeout=300)

    assert reply.id == "sha256:" + digest.hexdigest()
    assert reply.size == chunk_count * chunk_size
    assert reply.created
    assert server.wait(120) == 0, server.log()
    assert re.search(r"\bstopped$", server.log(), re.MULTILINE)

    # What was acknowledged is stored whole: a new server on the folder serves it, verified.
    again = start_server(data_dir=server.data_dir)
    with BlobClient(again.target, timeout=120) as client:
        info = client.get_to_file(reply.id, server.data_dir.parent / "copy.bin")
    assert info.size == chunk_count * chunk_size


def test_serve_on_address_in_use_is_a_one_line_error(server: ServerProcess, tmp_path: Path) -> None:
    done = blobstore("serve", "--address", server.target, "--data-dir", str(tmp_path / "second"))
    assert_clear_error(done, EXIT_ERROR, "cannot listen on", server.target, "in use")


def test_serve_on_data_folder_in_use_is_a_one_line_error(server: ServerProcess) -> None:
    done = blobstore("serve", "--address", "127.0.0.1:0", "--data-dir", str(server.data_dir))
    assert_clear_error(done, EXIT_ERROR, "in use by another blobstore server")
