"""Failed authentications per peer (security/failures.py) and certificate names (grpc/auth.py)."""

from __future__ import annotations

import logging

import pytest

from blobstore.grpc.auth import certificate_names
from blobstore.security.failures import FailedAttempts, FailureLimits, peer_host
from blobstore.security.tokens import parse_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_and_reset_with_the_window() -> None:
    clock = Clock()
    attempts = FailedAttempts(FailureLimits(free=2, max_delay=1.0, window=60), clock)
    delays = [attempts.failed("ipv4:10.0.0.1:5000", "x") for _ in range(7)]
    assert delays == [0, 0, 0.25, 0.5, 1.0, 1.0, 1.0]
    # Another port of the same address is the same peer; another address is not.
    assert attempts.failed("ipv4:10.0.0.1:6000", "x") == 1.0
    assert attempts.failed("ipv4:10.0.0.2:5000", "x") == 0
    assert attempts.failures("ipv4:10.0.0.1:1") == 8
    clock.now += 61
    assert attempts.failed("ipv4:10.0.0.1:5000", "x") == 0
    assert attempts.total == 10 and attempts.delayed == 6


def test_waiting_refusals_are_capped() -> None:
    attempts = FailedAttempts(FailureLimits(free=0, max_waiting=2), Clock())
    attempts.waiting = 2
    assert attempts.failed("ipv4:10.0.0.1:1", "x") == 0


def test_peers_are_bounded() -> None:
    attempts = FailedAttempts(FailureLimits(max_peers=3), Clock())
    for index in range(10):
        attempts.failed(f"ipv4:10.0.1.{index}:1", "x")
    assert len(attempts._peers) == 3


def test_logged_at_a_limited_rate(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    attempts = FailedAttempts(FailureLimits(log_interval=10, max_log_peers=2), clock)
    with caplog.at_level(logging.WARNING, "blobstore.security"):
        for _ in range(50):
            attempts.failed("ipv6:[::1]:5", "the bearer token is not valid")
        for index in range(5):  # more peers than may be logged per interval
            attempts.failed(f"ipv4:10.0.2.{index}:1", "x")
        clock.now += 11
        attempts.failed("ipv6:[::1]:5", "again")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("failed authentication from ::1 (1 in")
    assert "49 not logged since the last line" in lines[2]


def test_peer_host() -> None:
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_certificate_lines_and_names() -> None:
    entries = parse_tokens("cn:build%20agent builder read\nuri:spiffe://a/b svc read,write\n")
    assert [e.identity for e in entries] == ["cn:build agent", "uri:spiffe://a/b"]
    names = certificate_names(
        {
            "x509_common_name": [b"worker-1"],
            "peer_dns": [b"w.internal"],
            "peer_uri": [b"spiffe://a/b"],
        }
    )
    assert names == ["uri:spiffe://a/b", "dns:w.internal", "cn:worker-1"]
    assert certificate_names({}) == []


def test_each_peers_line_passes_the_process_wide_log_throttle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The throttle of repeated warnings keys on the format string; the failure lines,
    limited per peer here, must not hide a second peer's first line behind the first's."""
    from blobstore.service.hardening import ThrottledLogs

    throttle = ThrottledLogs(interval=10.0, clock=Clock())
    caplog.handler.addFilter(throttle)
    try:
        with caplog.at_level(logging.WARNING, logger="blobstore.security"):
            attempts = FailedAttempts(clock=Clock())
            attempts.failed("10.0.0.1", "x")
            attempts.failed("10.0.0.2", "x")
            logging.getLogger("blobstore.security").warning("a repeated line")
            logging.getLogger("blobstore.security").warning("a repeated line")
    finally:
        caplog.handler.removeFilter(throttle)
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "failed authentication from 10.0.0.1",
        "failed authentication from 10.0.0.2",
        "a repeated line",
    ]
