"""The benchmark's --quick smoke run: every workload measured, every ratio computed.

It never asserts speed (the machine is shared and noisy); it checks that one
command starts the echo server, our server and the bridge, drives every
workload (the bridge's included: a bridge that is missing or does not start
fails the run) and writes a complete, sane results file and table.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The benchmark pins its server and its load generator to one core each: it needs both.
pytestmark = pytest.mark.exclusive

ROOT = Path(__file__).resolve().parents[2]

CEILINGS = {
    "echo_put",
    "echo_put_sync",
    "echo_get",
    "echo_get_sync",
    "echo_batch_put",
    "echo_batch_put_sync",
    "echo_batch_get",
    "echo_batch_get_sync",
    "echo_get_stream",
    "echo_put_stream",
    "disk_small_files",
    "disk_small_files_dirsync",
    "disk_seq_write",
    "sha256",
}
SERVICE = {"put_small", "get_small", "put_dedup", "put_large", "get_large"}
BATCHES = {"batch_put", "batch_get"}
STEPFLOW = {"stepflow_put", "stepflow_get", "metrics_put_small", "metrics_get_small"}
STEPFLOW |= {"tracing_put_small", "tracing_get_small"}
STEPFLOW |= {"put_small_at_cap"}
BRIDGE = {"bridge_put", "bridge_get"}
SECURED = {"tls_put_small", "tls_get_small"}  # TLS + bearer token on (issue 14)
CONTROL = {"control_put_small", "control_get_small"}  # the A/A control: a second plain server
# Rows held to put_small/get_small trials run beside each of theirs (bench_main.PAIRED).
PAIRED = STEPFLOW | BRIDGE | SECURED | CONTROL


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_benchmark_measures_every_workload(tmp_path: Path) -> None:
    results_path = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--json", str(results_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    results = json.loads(results_path.read_text())
    expected = CEILINGS | SERVICE | BATCHES | STEPFLOW | BRIDGE | SECURED | CONTROL  # no peers

    workloads = results["workloads"]
    assert set(workloads) == expected
    for name, figures in workloads.items():
        for field in ("ops_per_s", "mb_per_s", "p50_ms", "p99_ms"):
            assert _positive(figures[field]), (name, field, figures[field])
        assert figures["p99_ms"] >= figures["p50_ms"], name
        assert figures["trials"], name
    for name in BRIDGE:  # requests really went through the bridge: counted, timed, its CPU
        trials = workloads[name]["trials"]
        assert sum(trial["ops"] for trial in trials) > 0, (name, trials)
        assert _positive(workloads[name]["server_cpu_cores"]), (name, workloads[name])

    ratios = {c["workload"]: c for c in results["checks"] if c["kind"] == "ratio"}
    assert set(ratios) == SERVICE | BATCHES | STEPFLOW | BRIDGE | SECURED | CONTROL
    for name, echoes in (("put_small", "echo_put"), ("get_small", "echo_get")):
        # Small calls are held to the faster of the two echo flavours.
        faster = max((echoes, f"{echoes}_sync"), key=lambda e: workloads[e]["ops_per_s"])
        assert ratios[name]["ceiling"] == faster, ratios[name]
    for name in BATCHES:  # a batch row counts blobs: BATCH per call
        trial = workloads[name]["trials"][0]
        assert trial["ops"] % 100 == 0, trial
    for check in ratios.values():
        assert _positive(check["ratio"]), check
        assert check["ceiling"] in workloads, check
        assert isinstance(check["pass"], bool)
        if check["workload"] not in PAIRED:
            assert check["ratio"] == check["value"] / check["ceiling_value"]
            continue
        # A paired row: one reference trial beside each of its trials, its ratio from
        # theirs; the reference trials are in the results beside its own.
        assert check["paired"] is True, check
        assert check["ceiling"] in ("put_small", "get_small"), check
        beside = results["references"][check["workload"]]["trials"]
        own = workloads[check["workload"]]["trials"]
        assert len(beside) == len(own) == len(check["trial_ratios"]), check
        expected_ratios = [
            a["ops_per_s"] / b["ops_per_s"] for a, b in zip(own, beside, strict=True)
        ]
        assert check["trial_ratios"] == expected_ratios
        assert check["ratio"] == _balanced(expected_ratios)
        assert _positive(check["cpu_ratio"]), check  # server CPU per call, pairs' median
    assert set(results["references"]) == PAIRED
    tails = {c["workload"] for c in results["checks"] if c["kind"] == "tail"}
    assert tails == {"put_small", "get_small", "put_dedup"} | BATCHES | PAIRED

    assert set(results["rss"]) == {"rss_put_stream", "rss_get_stream"}
    for figures in results["rss"].values():
        assert figures["peak_rss_bytes"] >= figures["baseline_rss_bytes"] > 0
        assert figures["growth_bytes"] >= 0
        assert _positive(figures["mb_per_s"])

    assert "skipped" not in results["bridge"], results["bridge"]
    for name in expected:
        assert name in run.stdout
    assert "targets met:" in run.stdout


def test_quick_object_store_benchmark_prints_every_row() -> None:
    """`--storage s3 --quick`: SeaweedFS, three servers, the echo and the forwarding server
    started, every row and every bound a finite ratio, the servers' CPU per call printed."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--storage", "s3", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {
        line.split()[0]: line.split()
        for line in run.stdout.splitlines()
        if line.endswith(("PASS", "MISS"))
    }
    for name in ["put_small", "get_small", "put_large", "get_large", "get_small_cached"]:
        cells = rows[name]  # row, ours, reference, unit, ratio, target, verdict
        ours, reference, ratio = float(cells[1]), float(cells[2]), float(cells[4])
        assert _positive(ours) and _positive(reference) and _positive(ratio), cells
    bounds = [line.split() for line in run.stdout.splitlines() if line.startswith("bound:")]
    rows_bounded = [cells[1] for cells in bounds]
    assert rows_bounded == ["get_small", "get_small", "get_large", "get_large"], run.stdout
    assert sum("forwards to obstore" in " ".join(cells) for cells in bounds) == 2, run.stdout
    for cells in bounds:  # bound: ROW of WHAT: RATE = RATIO x obstore
        assert _positive(float(cells[-5])) and _positive(float(cells[-3])), cells
    cpu = {
        " ".join(line.split()[:2]): float(line.split()[2])
        for line in run.stdout.split("server CPU per call")[1].splitlines()[1:]
        if line.strip()
    }
    assert set(cpu) == {
        f"{row} {server}" for row in ("get_small", "get_large") for server in ("ours", "forward")
    }, run.stdout
    assert all(_positive(value) for value in cpu.values()), cpu


def _balanced(per_trial: list[float]) -> float:
    """bench_main.balanced_ratio, as its docstring defines it."""
    couples = [math.sqrt(a * b) for a, b in zip(per_trial[0::2], per_trial[1::2], strict=False)]
    return statistics.median(couples) if couples else per_trial[0]


def test_the_paired_ratio_cancels_what_running_second_costs() -> None:
    """A row whose trials alternate reference-first and reference-second: a penalty for
    running second (q) moves each trial's ratio up or down, not the row's."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        from bench_main import balanced_ratio
    finally:
        sys.path.remove(str(ROOT / "scripts" / "bench"))
    q = 0.85
    for true in (0.7, 1.0, 1.3):
        # Reference first in trial 0: the row runs second and pays q; then the other way.
        per_trial = [true * q, true / q, true * q, true / q, true * q]
        assert math.isclose(balanced_ratio(per_trial), true)
        # The median of the trials, as before, took the order that ran more often.
        assert math.isclose(statistics.median(per_trial), true * q)
    assert balanced_ratio([0.9]) == 0.9
    assert balanced_ratio(per_trial) == _balanced(per_trial)


def test_repeated_runs_give_each_row_its_median_over_runs() -> None:
    """bench_repeat.py: every ratio row of every run, its median, and the verdict of the
    median against the row's target (not of any single run)."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        from bench_repeat import rows_of, table
    finally:
        sys.path.remove(str(ROOT / "scripts" / "bench"))

    def check(name: str, ratio: float, target: str = ">= 0.95") -> dict[str, Any]:
        return {"name": name, "kind": "ratio", "ratio": ratio, "cpu_ratio": ratio, "target": target}

    runs = [
        [check("m / g", 0.96), check("c / g", 1.00, "info"), {"name": "p99", "kind": "spread"}],
        [check("m / g", 0.90), check("c / g", 0.98, "info")],
        [check("m / g", 0.94), check("c / g", 1.02, "info")],
    ]
    metered, control = rows_of(runs)
    assert (metered.name, metered.ratios, metered.median) == ("m / g", [0.96, 0.90, 0.94], 0.94)
    assert metered.verdict() == "MISS"  # two runs of three below: the median decides
    assert control.verdict() == "info" and control.median == 1.00
    assert rows_of([[check("m / g", 0.95)]])[0].verdict() == "PASS"
    assert "0.96, 0.90, 0.94" in table([metered, control])
