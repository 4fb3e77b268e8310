"""Failed authentications per peer: counted, logged at a limited rate, slowed down.

A failed attempt is a call that presented credentials that are wrong (a malformed
`authorization`, an unknown or revoked token, a JWT that does not verify):
errors.InvalidCredentials. A call without credentials is not a guess and is not
counted. The peer is the client's IP address (its port is dropped: a client opens
new connections at will).

* Counting: per peer, in a fixed window of `window` seconds from its first failure.
* Slow-down: the first `free` failures of a window are answered at once; from the
  next one on, each refusal waits `first_delay` seconds, doubling with every further
  failure, at most `max_delay`. The wait is an asyncio sleep inside the refusal's
  own handler: it holds no thread and no admission ticket, and calls of other
  callers (or good calls of the same peer) go on meanwhile. At most `max_waiting`
  refusals wait at once; past that they are answered at once (a flood of waiting
  refusals must not hold the server's memory).
* Logging: one WARNING per peer per `log_interval` seconds at most, with the count
  and the last reason (never the credentials), and at most `max_log_peers` peers per
  interval in all.
* Memory: at most `max_peers` peers are remembered; the oldest window goes first.

Used by the gRPC server (grpc/auth.py, the peer is the gRPC client) and by the JSON-RPC
bridge (jsonrpc_bridge/auth_failures.py, the peer is the HTTP client): `slow_down` is
the one place a refusal is counted and made to wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("blobstore.security")


@dataclass(frozen=True)
class FailureLimits:
    free: int = 10
    window: float = 60.0
    first_delay: float = 0.25
    max_delay: float = 5.0
    max_waiting: int = 1000
    log_interval: float = 10.0
    max_log_peers: int = 20
    max_peers: int = 10_000


class _Peer:
    __slots__ = ("count", "logged_at", "started", "unlogged")

    def __init__(self, now: float) -> None:
        self.started = now
        self.count = 0
        self.logged_at = -1e18
        self.unlogged = 0


class FailedAttempts:
    """The per-peer failure counts; see the module docstring."""

    def __init__(
        self, limits: FailureLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or FailureLimits()
        self._clock = clock
        self._peers: dict[str, _Peer] = {}
        self._log_window = 0.0
        self._logged_peers = 0
        self.total = 0  # failures since start (all peers)
        self.delayed = 0  # refusals that were made to wait
        self.waiting = 0  # refusals waiting right now

    def failed(self, peer: str, reason: str) -> float:
        """Records a failure of `peer` (as grpc's context.peer() names it); returns the
        seconds its refusal should wait (0: answer at once)."""
        limits = self.limits
        now = self._clock()
        host = peer_host(peer)
        state = self._peers.get(host)
        if state is None or now - state.started > limits.window:
            if state is None and len(self._peers) >= limits.max_peers:
                del self._peers[next(iter(self._peers))]  # the oldest entry
            state = self._peers[host] = _Peer(now)
        state.count += 1
        self.total += 1
        self._log(host, state, now, reason)
        over = state.count - limits.free
        if over <= 0 or self.waiting >= limits.max_waiting:
            return 0.0
        self.delayed += 1
        return float(min(limits.first_delay * 2 ** min(over - 1, 30), limits.max_delay))

    async def slow_down(self, peer: str, reason: str) -> None:
        """Counts a failure of `peer` and waits as its count says (in the refusal's own
        task: nothing else waits)."""
        delay = self.failed(peer, reason)
        if delay <= 0:
            return
        self.waiting += 1
        try:
            await asyncio.sleep(delay)
        finally:
            self.waiting -= 1

    def failures(self, peer: str) -> int:
        """Failures of the peer in its current window (for tests and metrics)."""
        state = self._peers.get(peer_host(peer))
        return 0 if state is None else state.count

    def _log(self, host: str, state: _Peer, now: float, reason: str) -> None:
        limits = self.limits
        if now - state.logged_at < limits.log_interval:
            state.unlogged += 1
            return
        if now - self._log_window >= limits.log_interval:
            self._log_window, self._logged_peers = now, 0
        if self._logged_peers >= limits.max_log_peers:
            state.unlogged += 1
            return
        self._logged_peers += 1
        log.warning(
            "failed authentication from %s (%d in its current %.0f s window%s): %s",
            host,
            state.count,
            limits.window,
            f"; {state.unlogged} not logged since the last line" if state.unlogged else "",
            reason,
            extra={"rate_limited": True},  # limited here, per peer: not by hardening's throttle
        )
        state.logged_at, state.unlogged = now, 0


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.1:5000` -> `10.0.0.1`; `ipv6:[::1]:5000` -> `::1`; others as they are."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0] or rest
    return host.strip("[]")
