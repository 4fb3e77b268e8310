"""Process-level protections shared by the gRPC server and the bridge.

* `warn_if_exposed`: a listener on anything but loopback is reachable by other
  machines, and the bridge has no authentication or TLS yet: say so loudly at start.
  (The gRPC server refuses such a listener without authentication instead:
  service/security.py.)
* `raise_open_file_limit`: every connection costs a file descriptor; the soft
  RLIMIT_NOFILE (often 1024) is raised to the hard limit at start, and the
  connection caps are set below what is left of it.
* `ThrottledLogs`: a logging filter that lets the same message (same logger, level,
  text template and exception type) through at most once per interval and counts
  the rest, so a repeated failure (say, accept() at the descriptor limit) cannot
  write megabytes of tracebacks per second.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import socket
import time
from collections.abc import Callable

# Descriptors kept back from the connection cap for files, the journal, pipes and
# the process's own sockets.
RESERVED_DESCRIPTORS = 128


def is_loopback(host: str) -> bool:
    """True if every address `host` names is a loopback address ("", 0.0.0.0 and :: are not)."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def warn_if_exposed(log: logging.Logger, host: str, what: str) -> None:
    """Logs a warning if `what` listens on `host` beyond this machine."""
    if host.startswith("unix:") or is_loopback(host):
        return
    log.warning(
        "%s listens on %s, which other machines can reach: there is no authentication and "
        "no TLS, so anyone who can connect can read and store blobs. Bind to 127.0.0.1 "
        "or put an authenticating TLS proxy in front.",
        what,
        host or "all addresses",
    )


def raise_open_file_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns the (new) soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard
        if target == resource.RLIM_INFINITY:
            target = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int, open_file_limit: int) -> int:
    """The connection cap to use: the configured one, but below the descriptor limit.

    0 configured means "as many as the descriptors allow".
    """
    ceiling = max(open_file_limit - RESERVED_DESCRIPTORS, 16)
    if configured <= 0:
        return ceiling
    return min(configured, ceiling)


class ThrottledLogs(logging.Filter):
    """Passes each distinct message at most once per `interval` seconds; counts the rest.
    Records marked `rate_limited` (extra=) are limited by their emitter and pass."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._last: dict[tuple[str, int, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "rate_limited", False):
            # rate_limited: the emitter limits its own lines, per peer (security/failures.py);
            # throttling by format here would drop every other peer's line for `interval`.
            return True
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.levelno, str(record.msg), error)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            seconds = now - last[0]
            record.msg = f"{record.msg} [{last[1]} more like this in the last {seconds:.0f} s]"
        if len(self._last) > 1000:  # distinct messages are few; never grow without bound
            self._last.clear()
        self._last[key] = (now, 0)
        return True


def install_throttle(interval: float = 10.0) -> None:
    """Adds a ThrottledLogs filter to every handler of the root logger."""
    throttle = ThrottledLogs(interval)
    for handler in logging.getLogger().handlers:
        handler.addFilter(throttle)
