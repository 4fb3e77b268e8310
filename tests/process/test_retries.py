"""Client retries against a real server that is stopped, killed and restarted mid-call.

Every call is idempotent, so the client retries UNAVAILABLE and DEADLINE_EXCEEDED with
jittered exponential backoff under one deadline; streamed puts and gets start again
from the beginning. The schedule itself is checked as a plain function.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from blobstore.client import AsyncBlobClient, BlobClient
from blobstore.errors import InvalidBlobId, Unavailable
from blobstore.retry import RetryPolicy, Schedule
from tests.faults import check_blob_file, stored_files, wait_until
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB, temp_files

PATIENT = RetryPolicy(attempts=40, initial_backoff=0.05, max_backoff=0.5, deadline=60)


# -- the schedule ---------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_with_jitter_and_stops_after_the_attempts() -> None:
    policy = RetryPolicy(attempts=6, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    schedule = Schedule(policy, None, rng=random.Random(7))
    delays = []
    while True:
        schedule.timeout()
        delay = schedule.backoff(grpc.StatusCode.UNAVAILABLE)
        if delay is None:
            break
        delays.append(delay)
    assert len(delays) == 5  # six attempts, five pauses between them
    for index, delay in enumerate(delays):
        step = min(1.0, 0.1 * 2.0**index)
        assert step / 2 <= delay <= step
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder


def test_only_transient_codes_are_retried() -> None:
    schedule = Schedule(RetryPolicy(), None)
    schedule.timeout()
    assert schedule.backoff(grpc.StatusCode.DEADLINE_EXCEEDED) is not None
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.INTERNAL,
    ):
        assert schedule.backoff(code) is None
    off = Schedule(RetryPolicy.off(), None)
    off.timeout()
    assert off.backoff(grpc.StatusCode.UNAVAILABLE) is None


def test_the_deadline_cuts_attempt_timeouts_and_stops_retries() -> None:
    clock = _Clock()
    schedule = Schedule(
        RetryPolicy(attempts=100, initial_backoff=1.0, deadline=10), 4.0, clock=clock
    )
    assert schedule.timeout() == 4.0  # the per-call timeout, well within the deadline
    clock.now += 7.5
    assert schedule.timeout() == pytest.approx(2.5)  # what is left of the deadline
    clock.now += 2.4
    assert schedule.backoff(grpc.StatusCode.UNAVAILABLE) is None  # no time left to wait
    # Without its own deadline the policy uses the client's timeout for all attempts.
    shared = Schedule(RetryPolicy(), 3.0, clock=clock)
    clock.now += 2.0
    assert shared.timeout() == pytest.approx(1.0)


def test_overload_refusals_wait_for_the_deadline_not_the_attempts() -> None:
    """A call refused OVERLOADED was not run: with a deadline, refusals are retried
    until it (a burst past the server's cap is served later), other failures are not."""
    clock = _Clock()
    policy = RetryPolicy(attempts=3, initial_backoff=0.1, max_backoff=0.5, deadline=30)
    schedule = Schedule(policy, None, clock=clock, rng=random.Random(3))
    waited = 0.0
    for _ in range(50):  # far more refusals than attempts
        schedule.timeout()
        delay = schedule.backoff(grpc.StatusCode.UNAVAILABLE, refused=True)
        assert delay is not None and delay <= 0.5
        clock.now += delay
        waited += delay
    assert waited < 30
    for _ in range(2):  # real failures still end it after three attempts that ran
        schedule.timeout()
        assert schedule.backoff(grpc.StatusCode.UNAVAILABLE) is not None
    schedule.timeout()
    assert schedule.backoff(grpc.StatusCode.UNAVAILABLE) is None
    # And refusals stop at the deadline.
    fresh = Schedule(policy, None, clock=clock)
    fresh.timeout()
    clock.now += 30
    assert fresh.backoff(grpc.StatusCode.UNAVAILABLE, refused=True) is None
    # Without any deadline a refusal counts as an attempt, so retrying still ends.
    endless = Schedule(RetryPolicy(attempts=2), None)
    endless.timeout()
    assert endless.backoff(grpc.StatusCode.UNAVAILABLE, refused=True) is not None
    endless.timeout()
    assert endless.backoff(grpc.StatusCode.UNAVAILABLE, refused=True) is None


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)


# -- against a real server --------------------------------------------------------


class _Restart(threading.Thread):
    """Restarts a server on the same port and data once `when()` holds."""

    def __init__(
        self,
        start_server: Callable[..., ServerProcess],
        old: ServerProcess,
        when: Callable[[], bool],
    ) -> None:
        super().__init__(daemon=True)
        self._start_server = start_server
        self._old = old
        self._when = when
        self.server: ServerProcess | None = None
        self.start()

    def run(self) -> None:
        wait_until(self._when, timeout=30, what="the moment to restart")
        self.server = self._start_server(data_dir=self._old.data_dir, port=self._old.port)

    def finish(self) -> ServerProcess:
        self.join(30)
        assert self.server is not None, "the server was not restarted"
        return self.server


def _kill_when(server: ServerProcess, when: Callable[[], bool], what: str) -> threading.Thread:
    def run() -> None:
        wait_until(when, timeout=30, what=what)
        server.kill()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_calls_retry_until_a_stopped_server_is_back(
    start_server: Callable[..., ServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    with BlobClient(server.target, timeout=60, retry=PATIENT) as client:
        stored = client.put_bytes(b"before the restart").info.blob_id
        server.stop()
        failures_seen = threading.Event()
        restart = _Restart(start_server, server, failures_seen.is_set)

        class _Notice(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "retrying" in record.getMessage():
                    failures_seen.set()

        notice = _Notice()
        logging.getLogger("blobstore.retry").addHandler(notice)
        try:
            with caplog.at_level(logging.INFO, logger="blobstore.retry"):
                result = client.put_bytes(b"during the restart")
                blob = client.get(stored)
        finally:
            logging.getLogger("blobstore.retry").removeHandler(notice)
        restart.finish()
    assert result.info.blob_id == "sha256:" + hashlib.sha256(b"during the restart").hexdigest()
    assert blob.data == b"before the restart"
    assert any("UNAVAILABLE" in r.getMessage() for r in caplog.records)


def test_without_retries_or_past_the_deadline_the_error_comes_back(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    target = server.target
    server.stop()
    with (
        BlobClient(target, timeout=30, retry=RetryPolicy.off()) as client,
        pytest.raises(Unavailable),
    ):
        client.put_bytes(b"nobody listens")
    short = RetryPolicy(attempts=1000, initial_backoff=0.05, max_backoff=0.2, deadline=1.0)
    with BlobClient(target, timeout=30, retry=short) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.stat("sha256:" + "0" * 64)
        assert time.monotonic() - started < 15  # bounded by the deadline, not the attempts
        with pytest.raises(InvalidBlobId):  # bad input is never retried, nor sent
            client.stat("sha256:nope")


def test_streamed_put_and_get_start_again_after_the_server_dies_mid_stream(
    start_server: Callable[..., ServerProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="blobstore.retry")
    server = start_server()
    source = tmp_path / "source"
    source.write_bytes(os.urandom(96 * MiB))
    with BlobClient(server.target, timeout=120, retry=PATIENT) as client:
        # kill -9 while the put streams (its temp file exists), then restart.
        killer = _kill_when(server, lambda: bool(temp_files(server.data_dir)), "the put")
        restart = _Restart(start_server, server, lambda: not killer.is_alive())
        blob_id = client.put_file(source).info.blob_id
        server = restart.finish()
        assert blob_id == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
        assert temp_files(server.data_dir) == []
        for path in stored_files(server.data_dir):
            check_blob_file(path)

        # The same for a streamed get: kill while the partial download grows.
        target = tmp_path / "copy"
        killer = _kill_when(server, lambda: _partial(tmp_path, "copy") > 0, "the get")
        restart = _Restart(start_server, server, lambda: not killer.is_alive())
        info = client.get_to_file(blob_id, target)
        restart.finish()
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) >= 2, "each stream should have failed and started again"
    assert info.size == source.stat().st_size
    assert target.read_bytes() == source.read_bytes()
    assert _partial(tmp_path, "copy") == 0  # no partial download left behind


async def test_async_client_retries_too(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    async with AsyncBlobClient(server.target, timeout=60, retry=PATIENT) as client:
        await client.put_json({"before": True})
        server.stop()
        restart = _Restart(start_server, server, lambda: True)
        result = await client.put_json({"during": "restart"})
        restart.finish()
        assert (await client.get(result.info.blob_id)).data == b'{"during":"restart"}'


def _partial(folder: Path, name: str) -> int:
    """Bytes in the client's partial download file(s) for `name`."""
    total = 0
    for path in folder.glob(f".{name}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


async def _slow_settings_proxy(target_port: int, delay: float) -> asyncio.Server:
    """A TCP proxy to the server that holds back the server's first bytes for `delay` s."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait: float) -> None:
        await asyncio.sleep(wait)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_in, server_out, 0), pipe(server_in, client_out, delay))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_server_slow_to_send_its_settings_is_still_reached(server: ServerProcess) -> None:
    """The server's HTTP/2 settings arrive 0.5 s after the connection (a busy machine).

    The client's channel options once set grpc.min_reconnect_backoff_ms to 100, which gRPC
    also takes as the time a connection attempt is given: such a server was never
    reached ("connection attempt timed out before receiving SETTINGS frame"), and a
    test on a loaded machine failed with "tcp handshaker shutdown".
    """
    proxy = await _slow_settings_proxy(server.port, 0.5)
    port = proxy.sockets[0].getsockname()[1]
    try:

        def stat() -> object:
            with BlobClient(f"127.0.0.1:{port}", timeout=30, retry=RetryPolicy.off()) as client:
                return client.stat("sha256:" + "0" * 64)

        assert await asyncio.to_thread(stat) is None
    finally:
        proxy.close()
