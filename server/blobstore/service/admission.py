"""Admission control: a cap on concurrent calls and a budget of bytes held in memory.

Pure bookkeeping with no transport in it. The gRPC guard (server/blobstore/grpc/guard.py)
asks for a Ticket when a call arrives and sizes it to the request and reply
data that call holds in memory (a unary put's payload, a stream's chunk in
flight, a unary get's reply). When a cap would be passed the call is refused
at once with Overloaded - nothing waits in a queue, so neither latency nor
memory can grow without bound. Everything runs on one event loop, so the
counters need no locks.
"""

from __future__ import annotations

from dataclasses import dataclass

from blobstore.errors import Overloaded

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The caps; 0 switches a cap off."""

    max_calls: int = 512
    """Most calls in progress at once."""
    max_bytes: int = 512 * MiB
    """Most request and reply bytes held by calls in progress."""


class Admission:
    """Counts calls and bytes in progress against AdmissionLimits."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.calls = 0
        self.bytes = 0

    def admit(self, nbytes: int) -> Ticket:
        """Admits one call holding `nbytes`; raises Overloaded if a cap would be passed."""
        max_calls = self.limits.max_calls
        if max_calls and self.calls >= max_calls:
            raise Overloaded(
                f"server overloaded: {self.calls} calls in progress, the limit is {max_calls} "
                "(--max-concurrent-rpcs); retry later with backoff"
            )
        self._check_bytes(nbytes, held_by_caller=0)
        self.calls += 1
        self.bytes += nbytes
        return Ticket(self, nbytes)

    def _check_bytes(self, more: int, held_by_caller: int) -> None:
        limit = self.limits.max_bytes
        others = self.bytes - held_by_caller
        # A call alone is always let in, so a budget smaller than one blob cannot make
        # that blob impossible to store; memory is then bounded by the one call.
        if not limit or others == 0 or self.bytes + more <= limit:
            return
        raise Overloaded(
            f"server overloaded: {_mib(self.bytes)} of request and reply data in memory, "
            f"this call needs {_mib(more)} more and the limit is {_mib(limit)} "
            "(--max-inflight-bytes); retry later with backoff"
        )


class Ticket:
    """One admitted call's share of the budget; release() exactly once when it ends."""

    def __init__(self, admission: Admission, held: int) -> None:
        self._admission = admission
        self.held = held
        self._released = False

    def resize(self, nbytes: int) -> None:
        """Makes the call hold `nbytes`; growing raises Overloaded past the budget."""
        if self._released:
            return
        more = nbytes - self.held
        if more > 0:
            self._admission._check_bytes(more, held_by_caller=self.held)
        self._admission.bytes += more
        self.held = nbytes

    def grow(self, more: int) -> None:
        """Makes the call hold `more` bytes more (a reply about to be read); see resize()."""
        self.resize(self.held + more)

    def release(self) -> None:
        """Gives the call's share back; safe to call more than once."""
        if self._released:
            return
        self._released = True
        self._admission.calls -= 1
        self._admission.bytes -= self.held
        self.held = 0

    def __del__(self) -> None:
        # A call admitted before its request was read may never reach its handler
        # (the client went away first); dropping the ticket must still free the slot.
        self.release()


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB"
