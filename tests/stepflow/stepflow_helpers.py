"""Running the real Stepflow pieces from tests: the SDK probe, and `stepflow-server` itself.

`server_binary_runs` says whether stepflow-server can run here; `run_outputs` reads a
flow run's result; `sdk_calls` runs tests/stepflow/sdk_probe.py with the Stepflow venv's Python
(stepflow-py 0.13's own worker blob API against STEPFLOW_BLOB_URL).
`Orchestrator` runs the real `stepflow-server` binary on a free port with the
README's worked config (readme_config), whose Python worker points
STEPFLOW_BLOB_URL at our server, and stops
it by its process group (it ignores SIGTERM while a worker is connected), and
the worker (which the SDK moves into a session of its own) by its pid.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from tests.stepflow_venv import StepflowVenv

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"
_STARTED = re.compile(r"Stepflow server starting on http://[^:]+:(\d+)")
# The document the orchestrator tests run their flow on.
DOC: dict[str, Any] = {"name": "John", "scores": [1, 2.5], "pad": "x" * 3000, "unicode": "naïve ☃"}


def server_binary_runs(venv: StepflowVenv) -> str | None:
    """Why stepflow-server cannot run here, or None if it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"stepflow-server 0.13.0 ships for Linux x86-64 only, not {platform.platform()}"
    try:
        probe = subprocess.run(
            [str(venv.server_binary), "--help"], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        return f"stepflow-server cannot be executed here: {exc}"
    if probe.returncode != 0:
        return f"stepflow-server --help exited {probe.returncode}: {probe.stderr[-500:]}"
    return None


def run_outputs(result: dict[str, Any]) -> dict[str, Any]:
    """The outputs of a flow run's one result, which must have completed."""
    (item,) = result["run"]["results"]
    assert item["status"] == "EXECUTION_STATUS_COMPLETED", item
    return item["output"]  # type: ignore[no-any-return]


def binary(data: bytes) -> dict[str, str]:
    """Bytes as the probe takes and returns them."""
    return {"base64": base64.b64encode(data).decode()}


def sdk_calls(venv: StepflowVenv, target: str, calls: list[dict[str, Any]]) -> list[Any]:
    """Makes `calls` with stepflow-py's worker API against `target`; one answer per call."""
    done = subprocess.run(
        [str(venv.python), str(HERE / "sdk_probe.py")],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "STEPFLOW_BLOB_URL": target},
    )
    assert done.returncode == 0, done.stderr
    answers: list[Any] = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(calls), done.stdout + done.stderr
    return answers


class Orchestrator:
    """A real `stepflow-server` whose Python worker stores its blobs in our server."""

    def __init__(self, venv: StepflowVenv, blob_target: str, directory: Path) -> None:
        self.venv = venv
        self.directory = directory
        self.config_path = directory / "stepflow-config.json"
        self.log_path = directory / "stepflow-server.log"
        # The README's worked config, with our worker, its Python and our address.
        config = readme_config()
        python = config["plugins"]["python"]
        python["command"] = str(venv.python)
        python["args"] = [str(HERE / "flow_worker.py")]
        python["env"]["STEPFLOW_BLOB_URL"] = blob_target
        self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 90.0) -> Orchestrator:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                # An absolute config path: the worker is started in the config's folder.
                [str(self.venv.server_binary), "--port", "0", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # its own process group, to stop it whole
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _STARTED.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"stepflow-server exited with {self.proc.returncode}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"stepflow-server did not start in {timeout} s:\n{self.log()[-4000:]}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run_flow(self, doc: object) -> Any:
        """Runs the flow document `doc` through this orchestrator (flow_driver.py, in the
        Stepflow venv); its outputs, parsed. Fails the test, with the logs, if it fails."""
        done = subprocess.run(
            [str(self.venv.python), str(HERE / "flow_driver.py"), self.target],
            input=json.dumps(doc),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr + self.log()[-4000:]
        return json.loads(done.stdout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to its process group, SIGKILL after `grace`; its workers are killed too."""
        if self.proc is None:
            return
        workers = _descendants(self.proc.pid)
        with_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        for worker in workers:
            try:
                worker.kill()
                worker.wait(30)
            except psutil.NoSuchProcess:
                pass


def readme_config() -> dict[str, Any]:
    """The Stepflow config of the README's "Use it as Stepflow's blob service" section."""
    section = README.read_text(encoding="utf-8").split("<!-- stepflow-section -->", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    config: dict[str, Any] = json.loads(block)
    return config


def with_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
        return children
    except psutil.NoSuchProcess:
        return []
