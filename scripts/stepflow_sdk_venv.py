"""Makes the venv of one real Stepflow Python SDK release, for the tests that drive it.

    python scripts/stepflow_sdk_venv.py 0.7 0.9      # prints each venv's python

stepflow-py's own dependencies (opentelemetry, msgspec, fastapi, ...) have nothing to
do with ours and two releases are tested side by side, so each gets a venv of its own,
`.venv-stepflow-<release>/` at the top of the repository, installed from PyPI with
every package pinned by `tests/stepflow_sdk/requirements-<release>.txt`. The venv is
made on first use (the session fixture of tests/stepflow_sdk calls this) and again only
when its requirements file changes (a stamp file holds the file's hash). A lock file
keeps two test runs from building the same venv at once.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "tests" / "stepflow_sdk"
RELEASES = ("0.7", "0.9", "0.13")


def requirements_file(release: str) -> Path:
    return REQUIREMENTS / f"requirements-{release}.txt"


def venv_dir(release: str) -> Path:
    return ROOT / f".venv-stepflow-{release}"


def ensure(release: str) -> Path:
    """Makes (or keeps) the venv for `release`; returns its python."""
    if release not in RELEASES:
        raise ValueError(f"unknown stepflow-py release {release!r}; known: {', '.join(RELEASES)}")
    requirements = requirements_file(release)
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = venv_dir(release)
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{digest}"
    with open(ROOT / f".venv-stepflow-{release}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and python.exists():
            return python
        print(
            f"stepflow_sdk_venv: installing {requirements.name} into {venv.name}", file=sys.stderr
        )
        shutil.rmtree(venv, ignore_errors=True)
        # The interpreter that runs this script (3.11+) is the one the SDK runs on.
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
            ],
            check=True,
        )
        stamp.touch()
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("releases", nargs="+", choices=RELEASES, metavar="RELEASE")
    args = parser.parse_args()
    # Each install mostly waits on the network: build the venvs side by side.
    with ThreadPoolExecutor(len(args.releases)) as pool:
        for python in pool.map(ensure, args.releases):
            print(python)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
