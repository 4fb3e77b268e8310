"""Process-level protections: loopback detection, the connection cap, throttled logs."""

from __future__ import annotations

import logging

from blobstore.service.hardening import ThrottledLogs, connection_cap, is_loopback


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")


def test_the_connection_cap_stays_below_the_open_file_limit() -> None:
    assert connection_cap(4096, 1024) == 1024 - 128
    assert connection_cap(100, 20000) == 100
    assert connection_cap(0, 2048) == 2048 - 128


def test_a_repeated_error_is_logged_once_per_interval_with_a_count() -> None:
    now = [0.0]
    throttle = ThrottledLogs(interval=10.0, clock=lambda: now[0])

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("asyncio", level, __file__, 1, message, None, None)

    passed = [throttle.filter(record("socket.accept() out of system resource")) for _ in range(500)]
    assert passed.count(True) == 1
    assert throttle.filter(record("another error"))  # a different message passes
    assert throttle.filter(record("info is never held back", logging.INFO))
    now[0] = 11.0
    summary = record("socket.accept() out of system resource")
    assert throttle.filter(summary)
    assert "499 more like this" in summary.getMessage()
