"""Fixtures for the tests with the real Stepflow: the SDKs' venvs, a gRPC server, a
stand-in runtime per JSON-RPC-era SDK (0.7 over stdio, 0.9 over Streamable HTTP) with a
real bridge, and Stepflow 0.13 (`stepflow`: today's SDK and the real stepflow-server)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bridge_processes import BridgeProcess
from tests.processes import ServerProcess
from tests.stepflow.runtime import REPO, HttpRuntime, Runtime, SdkProcess, StdioRuntime
from tests.stepflow_venv import StepflowVenv, stepflow_venv

SDKS = ["0.7-stdio", "0.9-http"]
RuntimeFactory = Callable[..., Runtime]


@pytest.fixture(scope="session")
def stepflow_sdks() -> None:
    """Makes sure .venv-stepflow-07 and .venv-stepflow-09 exist (a no-op once stamped)."""
    subprocess.run([str(REPO / "scripts" / "stepflow_sdks")], check=True, timeout=1200)


@pytest.fixture(scope="module")
def start_runtime(
    stepflow_sdks: None, grpc_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeFactory]:
    """Starts an SDK component server and a bridge, wired by a stand-in runtime, initialized.

    `sdk` is one of SDKS; `bridge_args` go to the bridge (e.g. --blob-type-names page).
    """
    started: list[tuple[Runtime, BridgeProcess, SdkProcess]] = []

    def start(sdk: str, *bridge_args: str) -> Runtime:
        directory: Path = tmp_path_factory.mktemp(f"sdk-{sdk}")
        stdio = sdk.endswith("stdio")
        bridge = BridgeProcess(
            grpc_server.target, directory / "bridge.log", *bridge_args, stdio=stdio
        ).start()
        process = SdkProcess("07" if stdio else "09", directory / "sdk.log")
        runtime: Runtime = StdioRuntime(bridge, process) if stdio else HttpRuntime(bridge, process)
        started.append((runtime, bridge, process))
        assert runtime.initialize()["result"] == {"server_protocol_version": 1}
        return runtime

    yield start
    for runtime, bridge, process in started:
        process.kill()
        bridge.kill()
        if isinstance(runtime, HttpRuntime):
            runtime.close()


@pytest.fixture(scope="module", params=SDKS)
def runtime(request: pytest.FixtureRequest, start_runtime: RuntimeFactory) -> Runtime:
    """One initialized runtime per SDK, shared by a module's tests."""
    return start_runtime(request.param)


@pytest.fixture(scope="session")
def stepflow() -> StepflowVenv:
    """Stepflow 0.13 (stepflow-py and stepflow-orchestrator's stepflow-server), made once."""
    return stepflow_venv()
