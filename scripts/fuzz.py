"""A longer fuzz run: the suite's hypothesis properties, many more examples, new seeds.

Runs tests/fuzz/test_fuzz_grpc.py and tests/fuzz/test_fuzz_bridge.py (real server and
bridge processes on loopback) over and over with a fresh random seed each
round and --examples examples per property, until --minutes have passed or a
property fails; a failure prints hypothesis's falsifying example and the
seed to replay it with:

    python scripts/fuzz.py --minutes 30
    python -m pytest tests/fuzz/test_fuzz_grpc.py --hypothesis-seed=SEED   # replay

Exit status: 0 if every round passed, 1 at the first failing round.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["tests/fuzz/test_fuzz_grpc.py", "tests/fuzz/test_fuzz_bridge.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument(
        "--examples", type=int, default=1000, help="examples per property and round (default 1000)"
    )
    parser.add_argument("--grpc-only", action="store_true", help="skip the bridge properties")
    args = parser.parse_args()
    targets = TARGETS[:1] if args.grpc_only else TARGETS
    env = {**os.environ, "BLOBSTORE_FUZZ_EXAMPLES": str(args.examples)}
    deadline = time.monotonic() + args.minutes * 60
    rounds = 0
    while time.monotonic() < deadline:
        seed = random.randrange(2**32)
        left = max(60, int(deadline - time.monotonic()) + 60)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            f"--hypothesis-seed={seed}",
            f"--timeout={left}",
            *targets,
        ]
        print(f"round {rounds + 1}: seed {seed}", flush=True)
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        if done.returncode != 0:
            print(f"FAILED in round {rounds + 1}; replay with --hypothesis-seed={seed}")
            return 1
        rounds += 1
    print(f"{rounds} round(s) of {args.examples} examples per property passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
