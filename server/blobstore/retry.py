"""Client-side retries: the policy, the backoff schedule, and the one retry loop.

Every BlobService call is idempotent - a put of the same content stores the
same blob under the same id, reads change nothing - so a call that failed
with a transient status (UNAVAILABLE, DEADLINE_EXCEEDED by default) can
simply be made again. The schedule is exponential backoff with jitter
(each delay drawn uniformly from the upper half of its exponential step, so
clients that failed together do not come back together), bounded by a
number of attempts and by one overall deadline that also caps each attempt's
own timeout. `call` and `call_async` are the loop for blocking and asyncio
callers; the schedule they share holds all of the decisions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from blobstore.status import reason_of

log = logging.getLogger(__name__)

_T = TypeVar("_T")

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# What grpcio's asyncio client reports, instead of the server's status, when the server
# ends a client stream (refused, disk full, shutting down) while a write is still under
# way (grpc/grpc#36066). The real status is lost, so the call is retried like an
# UNAVAILABLE one: the next attempt learns it. Our server never sends this text itself.
LOST_STATUS = "Internal error from Core"


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries failed calls. `RetryPolicy.off()` makes one attempt only."""

    attempts: int = 6
    """Most attempts per call, the first included; 1 switches retrying off."""
    initial_backoff: float = 0.2
    """Seconds before the first retry (before jitter)."""
    max_backoff: float = 5.0
    """Longest pause between two attempts (before jitter)."""
    multiplier: float = 2.0
    """Each pause is this many times the one before."""
    deadline: float | None = None
    """Seconds for all attempts of one call together; None means the client's timeout."""
    retry_on: frozenset[grpc.StatusCode] = TRANSIENT
    """Status codes worth another attempt."""
    retry_overloaded: bool = False
    """Also retry RESOURCE_EXHAUSTED with reason OVERLOADED: the server refused the call
    before doing anything, so another attempt after the backoff is safe. Such refusals
    do not use up `attempts` when the call has a deadline: a busy server is waited for
    until the deadline (a burst past its cap is served, only later), while failures that
    may have done work stay bounded by `attempts`. Off by default (a program may prefer
    to shed load itself); the bridge turns it on."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    @classmethod
    def off(cls) -> RetryPolicy:
        return cls(attempts=1)


class Schedule:
    """The state of one call's retries: what timeout to give an attempt, how long to wait."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._timeout = timeout
        total = policy.deadline if policy.deadline is not None else timeout
        self._ends_at = None if total is None else clock() + total
        self.attempt = 0
        self._refusals = 0  # attempts refused OVERLOADED that do not count (see RetryPolicy)

    def timeout(self) -> float | None:
        """The timeout for the next attempt: the client's, cut to what the deadline leaves."""
        self.attempt += 1
        remaining = self.remaining()
        if remaining is None:
            return self._timeout
        return remaining if self._timeout is None else min(self._timeout, remaining)

    def remaining(self) -> float | None:
        return None if self._ends_at is None else max(0.0, self._ends_at - self._clock())

    def backoff(self, code: grpc.StatusCode, *, refused: bool = False) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with this error.
        `refused`: the server refused the attempt unseen (OVERLOADED)."""
        policy = self.policy
        if refused and self._ends_at is not None:
            self._refusals += 1
        if code not in policy.retry_on or self.attempt - self._refusals >= policy.attempts:
            return None
        step = min(
            policy.max_backoff, policy.initial_backoff * policy.multiplier ** (self.attempt - 1)
        )
        delay = self._rng.uniform(step / 2, step)
        remaining = self.remaining()
        if remaining is not None and delay >= remaining:
            return None
        return delay


def call(policy: RetryPolicy, timeout: float | None, attempt: Callable[[float | None], _T]) -> _T:
    """Runs `attempt(timeout)` until it succeeds or the policy gives up (blocking)."""
    schedule = Schedule(policy, timeout)
    while True:
        try:
            return attempt(schedule.timeout())
        except grpc.RpcError as exc:
            delay = _next(schedule, exc)
            if delay is None:
                raise
        time.sleep(delay)


async def call_async(
    policy: RetryPolicy,
    call_timeout: float | None,
    attempt: Callable[[float | None], Awaitable[_T]],
) -> _T:
    """Runs `await attempt(timeout)` until it succeeds or the policy gives up (asyncio)."""
    schedule = Schedule(policy, call_timeout)
    while True:
        try:
            return await attempt(schedule.timeout())
        except grpc.RpcError as exc:
            delay = _next(schedule, exc)
            if delay is None:
                raise
        await asyncio.sleep(delay)


def _next(schedule: Schedule, exc: grpc.RpcError) -> float | None:
    code: grpc.StatusCode = exc.code()
    refused = _refused(schedule, exc)
    transient = refused or _transient(schedule, exc)
    delay = schedule.backoff(grpc.StatusCode.UNAVAILABLE if transient else code, refused=refused)
    if delay is not None:
        log.info(
            "attempt %d failed with %s (%s); retrying in %.2f s",
            schedule.attempt,
            code.name,
            exc.details(),
            delay,
        )
    return delay


def _transient(schedule: Schedule, exc: grpc.RpcError) -> bool:
    """True for failures that are retried like UNAVAILABLE whatever their code says."""
    code: grpc.StatusCode = exc.code()
    if code is grpc.StatusCode.INTERNAL:
        return exc.details() == LOST_STATUS
    return False


def _refused(schedule: Schedule, exc: grpc.RpcError) -> bool:
    """True for an OVERLOADED refusal that the policy retries."""
    return (
        schedule.policy.retry_overloaded
        and exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        and reason_of(exc) == "OVERLOADED"
    )
