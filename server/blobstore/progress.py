"""Progress bars for the CLI's long commands: put and get of large files, verify.

A bar (tqdm, on standard error: standard output carries ids, JSON and blob data)
shows bytes done, rate and time left. It is drawn only when standard error is a
terminal and --quiet is not given: piped or redirected output gets none of it,
and scripts parsing the output see exactly what they did before. Blobs smaller
than MIN_BYTES finish before a bar would say anything, so they get none either.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

MIN_BYTES = 8 * 1024 * 1024


def _columns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


class Progress:
    """Called with (bytes done, total or None) as work advances; draws or does nothing.

    Called from gRPC's threads too (a streamed put's requests are read there):
    tqdm's own lock keeps the drawing whole. A retried call starts again from 0,
    and so does the bar.
    """

    def __init__(self, description: str, *, quiet: bool = False, stream: IO[str] | None = None):
        self._description = description
        self._stream = stream if stream is not None else sys.stderr
        self._on = not quiet and self._stream.isatty()
        self._bar: Any = None

    @property
    def wanted(self) -> bool:
        """Whether a bar may be drawn (else callers need not report at all)."""
        return self._on

    def __call__(self, done: int, total: int | None) -> None:
        if not self._on:
            return
        if self._bar is None:
            if total is not None and total < MIN_BYTES:
                self._on = False
                return
            from tqdm import tqdm  # only when a bar is drawn

            self._bar = tqdm(
                desc=self._description,
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                mininterval=0.2,
                # A terminal that reports no width (0 columns) would get an empty bar.
                ncols=None if _columns(self._stream) else 80,
            )
        elif total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
