"""Figures of the benchmark: one trial's raw numbers, and the medians over trials."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

MB = 1_000_000
# Below this many latencies per trial, percentiles are taken over all trials pooled.
_PER_TRIAL_SAMPLES = 100


@dataclass
class Trial:
    """One timed run of a workload."""

    ops: int
    seconds: float
    payload_bytes: int
    latencies: list[float] = field(repr=False)
    server_cpu: float | None = None
    """Server-side CPU use during the trial, in cores (1.0 = one core busy)."""
    loader_cpu: float | None = None
    """Load generator CPU use during the trial, in cores."""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / self.seconds / MB


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """A workload's figures: medians over its trials."""

    ops_per_s: float
    mb_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu: float | None
    loader_cpu: float | None
    trials: list[Trial] = field(repr=False)

    @staticmethod
    def of(trials: list[Trial]) -> Summary:
        if not trials or any(t.ops == 0 for t in trials):
            raise ValueError("a workload finished a trial without completing any operation")
        if all(len(t.latencies) >= _PER_TRIAL_SAMPLES for t in trials):
            p50 = statistics.median(percentile(t.latencies, 50) for t in trials)
            p99 = statistics.median(percentile(t.latencies, 99) for t in trials)
        else:
            pooled = [x for t in trials for x in t.latencies]
            p50, p99 = percentile(pooled, 50), percentile(pooled, 99)
        return Summary(
            ops_per_s=statistics.median(t.ops_per_s for t in trials),
            mb_per_s=statistics.median(t.mb_per_s for t in trials),
            p50_ms=p50 * 1000,
            p99_ms=p99 * 1000,
            server_cpu=_median_or_none([t.server_cpu for t in trials]),
            loader_cpu=_median_or_none([t.loader_cpu for t in trials]),
            trials=trials,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ops_per_s": self.ops_per_s,
            "mb_per_s": self.mb_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p99_over_p50": self.p99_ms / self.p50_ms,
            "server_cpu_cores": self.server_cpu,
            "loader_cpu_cores": self.loader_cpu,
            "trials": [
                {
                    "ops": t.ops,
                    "seconds": t.seconds,
                    "ops_per_s": t.ops_per_s,
                    "mb_per_s": t.mb_per_s,
                    "p50_ms": percentile(t.latencies, 50) * 1000,
                    "p99_ms": percentile(t.latencies, 99) * 1000,
                    "server_cpu_cores": t.server_cpu,
                    "loader_cpu_cores": t.loader_cpu,
                }
                for t in self.trials
            ],
        }


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
