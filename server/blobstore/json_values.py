"""How many values a JSON text holds, counted before it is parsed.

Parsing costs memory and time per value, not per byte: 30 MiB of `[[],[],...]`
is 10 million lists, about 1 GiB once parsed and seconds of CPU in one call
that holds the GIL. Both the service and the bridge count a text's values
first, with C-speed byte counts, and refuse a text over their cap before
parsing it; the service parses texts with many values in a worker process
(offload.py), so the event loop never waits for them.

"Values" is counted as 1 + commas + opening brackets and braces outside
strings: every value but the first of a container follows a comma, and each
container's first value follows its bracket. It is never less than the true
number of values (array elements, object members, the containers themselves),
and at most about twice it.
"""

from __future__ import annotations

import re

DEFAULT_MAX_VALUES = 4_000_000
"""The default cap: about 200 MiB of parsed objects in the worst case (`[]` values)."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# Counted a slice at a time, so that a thread counting a large text lets others run
# between slices (each count holds the GIL).
_SLICE = 1024 * 1024


def estimate_values(data: bytes) -> int:
    """An upper bound of the values in `data`, counting commas and brackets in strings too."""
    total = 1
    for start in range(0, len(data), _SLICE):
        end = start + _SLICE
        total += data.count(b",", start, end) + data.count(b"[", start, end)
        total += data.count(b"{", start, end)
    return total


def count_values(text: bytes) -> int:
    """The count described in the module docstring: strings are skipped (slower)."""
    return estimate_values(_STRING.sub(b'""', text))


def over_limit(text: bytes, limit: int) -> int | None:
    """The count of `text`'s values if it is over `limit` (0 = no limit), else None.

    The cheap estimate settles almost every text; only one that looks over the
    limit is counted again without its strings (commas in strings are no values).
    """
    if not limit or estimate_values(text) <= limit:
        return None
    count = count_values(text)
    return count if count > limit else None
