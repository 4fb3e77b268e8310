"""Durations as people write them: `90`, `90s`, `15m`, `12h`, `7d`, `2w` (seconds if no unit)."""

from __future__ import annotations

import math


class Seconds(float):
    """A setting in seconds, given as a duration (parse_duration)."""


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds; raises ValueError for anything else than a number with an optional unit."""
    cleaned = text.strip().lower()
    unit = _UNITS.get(cleaned[-1:]) if cleaned else None
    number = cleaned[:-1] if unit is not None else cleaned
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration: give a number with s, m, h, d or w (e.g. 7d)"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a duration of zero or more")
    return value
