"""Real server processes for tests: start on a free port, read the start-up line, stop or kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from tests import ports

_LISTENING = re.compile(r"blobstore gRPC listening on (\S+):(\d+)")


class ChildProcess:
    """A child process whose output goes to a log file: wait for its start-up line, stop, kill."""

    name = "process"

    def __init__(self, log_path: Path, env: dict[str, str] | None) -> None:
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def _open_log(self) -> tuple[IO[bytes], int]:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        return self._log, self.log_path.stat().st_size

    def _wait_for_line(
        self, pattern: re.Pattern[str], start_offset: int, timeout: float
    ) -> re.Match[str]:
        """Waits until the log, from `start_offset`, has a line matching `pattern`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start_offset:].decode(errors="replace")
            match = pattern.search(text)
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.name} did not start in {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the violent path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.wait()


class ServerProcess(ChildProcess):
    """A `blobstore serve` child process with its data folder and log file."""

    name = "server"

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *extra_args: str,
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        """`port` 0: one of this test worker's own (tests/ports.py), so that a restart
        on it finds it free."""
        super().__init__(log_path, env)
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.port = port or ports.free_port()
        self.target = ""

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log, start_offset = self._open_log()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blobstore.cli",
                "serve",
                "--address",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data_dir),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        match = self._wait_for_line(_LISTENING, start_offset, timeout)
        self.port = int(match.group(2))
        self.target = f"127.0.0.1:{self.port}"
        return self
