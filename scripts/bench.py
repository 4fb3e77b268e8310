#!/usr/bin/env python3
"""The benchmark's entry point: `python scripts/bench.py [options]`.

The benchmark and the experiment scripts live in scripts/bench/ (see
docs/performance.md); this file only runs scripts/bench/bench_main.py with
that folder on the import path, so the documented command stays the same.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent / "bench"

if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    runpy.run_path(str(BENCH_DIR / "bench_main.py"), run_name="__main__")
