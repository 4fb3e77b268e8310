"""The machine lock of a parallel test run: `exclusive` tests run with nothing else beside them.

`scripts/test` runs pytest with pytest-xdist workers, so two tests usually run at once.
A few tests need the machine to themselves: they pin processes to cores, measure rates,
or bound how long a call may wait beside another (see the `exclusive` marker in
pyproject.toml). Every test holds one lock file of the run while it runs (set-up,
call and tear-down): ordinary tests hold it shared, `exclusive` ones alone.

The lock prefers the exclusive taker: it first takes a gate that every shared taker
passes through, so a worker that keeps starting ordinary tests cannot keep an
exclusive test waiting for ever (flock itself promises no order). Without xdist the
run is one process and no lock is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Holds the run's lock at `path` (and its gate beside it) while the block runs."""
    with (
        open(path.with_name(path.name + ".gate"), "a+b") as gate,
        open(path, "a+b") as lock,
    ):
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        # The gate is held only while waiting for the lock: an exclusive taker holding
        # it keeps new shared takers out while those already in finish.
        fcntl.flock(gate, mode)
        try:
            fcntl.flock(lock, mode)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
