"""Loopback ports for the tests' servers, from a block no other process is handed.

The kernel gives ports to bind(port 0) and to outgoing connections from its ephemeral
range (/proc/sys/net/ipv4/ip_local_port_range). A test that kills a server and starts it
again on the same port (its clients must find it there) leaves the port free meanwhile:
in a parallel run (pytest-xdist) another worker's server, started on port 0, once took
it, and the test's client then talked to that server. So the servers here listen on
ports just below the ephemeral range, each xdist worker in a block of its own: the
kernel never hands those out, and no other worker uses the block. A worker's tests run
one at a time, and its ports are handed out in turn round the block, so a port comes
back only after the rest of the block has been used.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

BLOCK = 1500
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _block() -> range:
    try:
        low = int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    top = low - BLOCK * index
    if top - BLOCK < 1024:
        raise RuntimeError(f"no block of {BLOCK} ports below {low} for xdist worker {worker}")
    return range(top - BLOCK, top)


_PORTS = _block()
_TURN = itertools.count()


def free_ports(count: int = 1) -> list[int]:
    """`count` different ports of this worker's block that are free now."""
    found: list[int] = []
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_TURN) % len(_PORTS)]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # in use, or its connections are still closing (TIME_WAIT)
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {_PORTS}")


def free_port() -> int:
    """One port of this worker's block that is free now."""
    return free_ports(1)[0]
