#!/usr/bin/env python3
"""Runs the benchmark several times, each with freshly started processes, and prints
every ratio row per run and its median over the runs.

    python scripts/bench/bench_repeat.py --runs 4 -- --no-peers --only metrics_get_small

Everything after `--` goes to scripts/bench.py (its own `--json` is set per run).
Why: within one run the trials of a paired row agree, but each server is started
once per run, so whatever differs from one process to the next (address-space
layout, hash seed, where the allocator put things) is sampled once per row: issue
16's rows moved by 0.05-0.07 between runs of the same code (docs/performance.md).
The median over runs averages that too, as each run's trials average the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "bench.py"


@dataclass
class Row:
    """One ratio row of the benchmark over several runs."""

    name: str
    target: str
    ratios: list[float]
    cpu_ratios: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def verdict(self) -> str:
        """PASS or MISS for the median against a `>= x` target; `info` for the rest."""
        op, _, bound = self.target.partition(" ")
        if op != ">=":
            return "info"
        return "PASS" if self.median >= float(bound) else "MISS"


def rows_of(runs: list[list[dict[str, Any]]]) -> list[Row]:
    """The ratio checks of each run's results file (`checks`), row by row, in the first
    run's order; a row missing from a run is left out of that run's figures."""
    found: dict[str, Row] = {}
    for checks in runs:
        for check in checks:
            if check.get("kind") != "ratio" or check.get("ratio") is None:
                continue
            row = found.setdefault(check["name"], Row(check["name"], check["target"], [], []))
            row.ratios.append(check["ratio"])
            if check.get("cpu_ratio") is not None:
                row.cpu_ratios.append(check["cpu_ratio"])
    return list(found.values())


def table(rows: list[Row]) -> str:
    lines = [f"{'row':40} {'per run':30} {'median':>7} {'cpu':>6}  target   verdict"]
    for row in rows:
        runs = ", ".join(f"{ratio:.2f}" for ratio in row.ratios)
        cpu = f"{statistics.median(row.cpu_ratios):6.2f}" if row.cpu_ratios else "     -"
        lines.append(
            f"{row.name:40} {runs:30} {row.median:7.2f} {cpu}  {row.target:8} {row.verdict()}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="benchmark runs (4)")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench.py's options")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    if "--json" in bench_args:
        parser.error("--json is set per run")
    runs: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="blobstore-bench-repeat-") as tmp:
        for run in range(args.runs):
            print(f"bench_repeat: run {run + 1}/{args.runs}", flush=True)
            results = Path(tmp) / f"run-{run}.json"
            subprocess.run(
                [sys.executable, str(BENCH), *bench_args, "--json", str(results)], check=True
            )
            runs.append(json.loads(results.read_text())["checks"])
    print(f"\nratio rows over {args.runs} runs, each with its own processes:")
    print(table(rows_of(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
