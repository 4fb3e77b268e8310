"""A short soak in the suite: scripts/soak.py for 20 s against its own server and bridge.

Many gRPC and bridge clients, small and large blobs, every read checked against its
id. The run must end with zero errors and flat memory (the script's rule: after a
quarter of the run as warm-up, the median RSS of the last third at most 48 MiB above
that of the first third) for both the server and the bridge. Longer runs:
`python scripts/soak.py --duration 600`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def _soak(*args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Runs soak.py with `args` and --json; its report and the finished process."""
    done = subprocess.run(
        [sys.executable, str(SOAK), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done


def test_short_soak_has_no_errors_and_flat_memory() -> None:
    report, done = _soak("--duration", "20", "--clients", "12")
    assert report["errors"] == 0, report["error_examples"]
    names = set(report["operations_by_name"])
    assert {"grpc put+get large", "grpc put small", "grpc get", "bridge put", "bridge get"} <= names
    assert report["operations"] >= 500, report["operations_by_name"]
    for process in ("server", "bridge"):
        memory = report["memory"][process]
        assert memory["flat"], (process, memory)
    assert done.returncode == 0, done.stderr


def test_short_hostile_soak_loses_no_acknowledged_put() -> None:
    """soak.py --hostile for 20 s: attackers next to normal traffic (latency is not judged here).

    The attackers run for the last 15 s, three times the service's 5 s handshake, idle and
    body timeouts that end their slow connections and idle streams."""
    report, _ = _soak("--duration", "20", "--clients", "6", "--hostile")
    hostile = report["hostile"]
    assert hostile["acknowledged_puts"] > 0
    assert hostile["lost_puts"] == [], hostile
    assert hostile["violations"] == [], hostile
    outcomes = hostile["attacker_outcomes"]
    assert outcomes.get("json grpc: RESOURCE_EXHAUSTED BLOB_TOO_LARGE"), outcomes
    assert outcomes.get("slow: closed by the service"), outcomes
    assert not any("CANCELLED" in outcome for outcome in outcomes), outcomes
    assert report["errors"] == 0, report["error_examples"]
