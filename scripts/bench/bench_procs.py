"""Processes for the benchmark: CPU split, pinned child servers, CPU time and peak RSS.

The machine's cores are split in two: the first one for the server side
(our server, the echo server, the bridge), the rest for the load generator,
so neither steals the other's CPU. A child is pinned before it starts
(taskset, or sched_setaffinity in the child when taskset is missing), so
every thread it creates inherits the pinning.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CpuSplit:
    """Which cores the server side and the load generator run on (None = not pinned)."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    @staticmethod
    def detect() -> CpuSplit:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return CpuSplit(None, None)
        return CpuSplit(frozenset(cores[:1]), frozenset(cores[1:]))

    def describe(self) -> str:
        if self.server is None or self.load is None:
            return "not pinned (fewer than 2 cores)"
        return f"server side on cores {sorted(self.server)}, load generator on {sorted(self.load)}"


def pin_self(cpus: frozenset[int] | None) -> None:
    """Pins this process; call it before any thread exists so they all inherit it."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


@dataclass
class Child:
    """A pinned child process whose output goes to a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class StartError(Exception):
    """A child process exited or never printed its start-up line."""


def start_child(
    name: str,
    argv: list[str],
    *,
    cpus: frozenset[int] | None,
    log_path: Path,
    ready: re.Pattern[str],
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> Child:
    """Starts `argv` pinned to `cpus` and waits for `ready` (group 1 = address) in its log.

    `env` adds to (or overrides) this process's environment for the child only. The
    start-up is not what is measured, so the wait is long: pinned to one core that another
    benchmark's processes also had (a shared machine), a server took 30 s to listen and the
    suite's --quick run failed.
    """
    command = list(argv)
    preexec = None
    if cpus is not None:
        taskset = shutil.which("taskset")
        if taskset:
            command = [taskset, "-c", ",".join(map(str, sorted(cpus))), *command]
        else:

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

    log_file = open(log_path, "wb")  # noqa: SIM115 - the child owns it until it exits
    proc = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        preexec_fn=preexec,
        env={**os.environ, **env} if env else None,
    )
    log_file.close()
    child = Child(name, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = ready.search(child.log())
        if match:
            child.address = match.group(1)
            return child
        if proc.poll() is not None:
            raise StartError(f"{name} exited with {proc.returncode}:\n{child.log()}")
        time.sleep(0.02)
    child.stop()
    raise StartError(f"{name} did not start within {timeout:.0f} s:\n{child.log()}")


SERVER_READY = re.compile(r"blobstore gRPC listening on (\S+:\d+)")
ECHO_READY = re.compile(r"echo gRPC listening on (\S+:\d+)")


def start_echo_server(
    log_path: Path,
    cpus: frozenset[int] | None,
    *variant: str,
    name: str = "echo server",
    env: dict[str, str] | None = None,
) -> Child:
    """Starts scripts/bench/bench_echo.py (with `variant` options, if any) on a free port."""
    return start_child(
        name,
        python_argv(str(ROOT / "scripts" / "bench" / "bench_echo.py"), *variant),
        cpus=cpus,
        log_path=log_path,
        ready=ECHO_READY,
        env=env,
    )


def start_blobstore_server(
    work: Path, cpus: frozenset[int] | None, env: dict[str, str] | None
) -> Child:
    """Starts our server as shipped on a free port, data in work/data, log in work/server.log."""
    data = str(work / "data")
    return start_child(
        "blobstore server",
        python_argv("-m", "blobstore.cli", "serve", "--address", "127.0.0.1:0", "--data-dir", data),
        cpus=cpus,
        log_path=work / "server.log",
        ready=SERVER_READY,
        env=env,
    )


def start_baseline_server(
    tree: Path,
    work: Path,
    cpus: frozenset[int] | None,
    env: dict[str, str] | None = None,
    storage: tuple[str, ...] = (),
) -> Child:
    """Our server as another source tree has it (a `git worktree` or `git archive` of a commit).

    It stores in work/data unless `storage` gives other serve options (`--storage URL`).

    The tree's own code is imported, not this one's: `-P` keeps the working
    folder off sys.path and PYTHONPATH points at the tree's source root. Trees
    from before the package rename (the package `server` at the top) and after
    it (`blobstore` under `server/`) both work. The tree runs with this venv's
    libraries, so it measures the code, not other dependency versions.
    """
    if (tree / "server" / "blobstore" / "cli.py").exists():
        source_root, module = tree / "server", "blobstore.cli"
    elif (tree / "server" / "cli.py").exists():
        source_root, module = tree, "server.cli"
    else:
        raise StartError(f"{tree} holds neither server/blobstore/cli.py nor server/cli.py")
    work.mkdir(parents=True, exist_ok=True)
    return start_child(
        "baseline server",
        python_argv(
            "-P",
            "-m",
            module,
            "serve",
            "--address",
            "127.0.0.1:0",
            *(storage or ("--data-dir", str(work / "data"))),
        ),
        cpus=cpus,
        log_path=work / "server.log",
        ready=SERVER_READY,
        env={**(env or {}), "PYTHONPATH": str(source_root.resolve())},
    )


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by the given processes (all their live threads).

    Sums the nanosecond run times in /proc/PID/task/*/schedstat; psutil's
    clock-tick figures (10 ms steps) are too coarse for one-shot operations
    of a few milliseconds, and are used only where schedstat is missing.
    """
    total = 0.0
    for pid in pids:
        tasks = Path(f"/proc/{pid}/task")
        if not (tasks / str(pid) / "schedstat").exists():
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
            continue
        for task in tasks.iterdir():
            # A thread may end between the listing and the read.
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0]) / 1e9
    return total


class PeakRss:
    """Measures a process's peak resident memory over a stretch of time.

    Two sources, the larger wins: psutil samples every few milliseconds, and
    the kernel's high-water mark (VmHWM), which is reset at the start when
    /proc/PID/clear_refs is writable (Linux, same user or root) and so also
    catches peaks shorter than a sample.
    """

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._process = psutil.Process(pid)
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.baseline = 0
        self.sampled_peak = 0
        self.hwm_reset = False

    def __enter__(self) -> PeakRss:
        self.baseline = self._process.memory_info().rss
        self.sampled_peak = self.baseline
        try:
            Path(f"/proc/{self._pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self._process.memory_info().rss
            self.sampled_peak = max(self.sampled_peak, rss)

    @property
    def peak(self) -> int:
        peak = self.sampled_peak
        if self.hwm_reset:
            peak = max(peak, _vm_hwm(self._pid))
        return peak

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
