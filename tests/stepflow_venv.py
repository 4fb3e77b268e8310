"""The real Stepflow from PyPI, in a venv of its own, made on demand by the tests that need it.

Stepflow's packages pin a protobuf and grpcio of their own, so they do not share
our `.venv`. `stepflow_venv()` creates `.venv-stepflow-0.13/` at the repository
root (once; a stamp names the pins it was made with) and installs
`stepflow-py` (the worker SDK and client) and `stepflow-orchestrator` (which
ships the `stepflow-server` binary) at exactly the versions below. A lock file
keeps concurrent test sessions from installing into it at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPFLOW_VERSION = "0.13.0"
PINS = (f"stepflow-py=={STEPFLOW_VERSION}", f"stepflow-orchestrator=={STEPFLOW_VERSION}")
VENV = ROOT / f".venv-stepflow-{STEPFLOW_VERSION.rsplit('.', 1)[0]}"


@dataclass(frozen=True)
class StepflowVenv:
    """Where the installed Stepflow lives."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def server_binary(self) -> Path:
        """`stepflow-server`, as the stepflow-orchestrator wheel ships it."""
        found = sorted(
            self.root.glob("lib/python*/site-packages/stepflow_orchestrator/bin/stepflow-server")
        )
        if not found:
            raise FileNotFoundError(f"no stepflow-server binary under {self.root}")
        return found[0]


def stepflow_venv() -> StepflowVenv:
    """Makes (or reuses) the venv with Stepflow's pinned packages and returns it."""
    stamp = VENV / (".installed-" + hashlib.sha256("\n".join(PINS).encode()).hexdigest()[:16])
    venv = StepflowVenv(VENV)
    if stamp.exists():
        return venv
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f"{VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():  # another session finished it while we waited
            return venv
        if not venv.python.exists():
            # The interpreter behind our own venv: Stepflow supports the same versions.
            _run([sys._base_executable, "-m", "venv", str(VENV)])  # type: ignore[attr-defined]
        _run(
            [
                str(venv.python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *PINS,
            ]
        )
        for old in VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return venv


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(
            f"setting up {VENV.name} failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
        )
