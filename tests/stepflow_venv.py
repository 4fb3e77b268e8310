"""The real Stepflow 0.13 from PyPI, in a venv of its own, made on demand by the tests that need it.

`stepflow_venv()` has scripts/stepflow_sdks make (once; later runs are a no-op)
`.venv-stepflow-13/` with every package pinned by tests/stepflow/requirements-0.13.txt:
`stepflow-py` (the worker SDK and client) and `stepflow-orchestrator` (which ships the
`stepflow-server` binary). Stepflow pins a protobuf and grpcio of its own, so it does
not share our `.venv`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-stepflow-13"


@dataclass(frozen=True)
class StepflowVenv:
    """Where the installed Stepflow lives."""

    python: Path

    @property
    def server_binary(self) -> Path:
        """`stepflow-server`, as the stepflow-orchestrator wheel ships it."""
        root = self.python.parent.parent
        found = sorted(
            root.glob("lib/python*/site-packages/stepflow_orchestrator/bin/stepflow-server")
        )
        if not found:
            raise FileNotFoundError(f"no stepflow-server binary under {root}")
        return found[0]


def stepflow_venv() -> StepflowVenv:
    """Makes (or reuses) the venv with Stepflow 0.13's pinned packages and returns it."""
    subprocess.run([str(ROOT / "scripts" / "stepflow_sdks")], check=True, timeout=1200)
    return StepflowVenv(VENV / "bin" / "python")
