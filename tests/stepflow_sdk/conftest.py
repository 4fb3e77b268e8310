"""Fixtures for the real-SDK tests: the SDK venvs, one server, and a stand-in runtime per SDK.

The venvs are made on first use by scripts/stepflow_sdk_venv.py (both at once);
later runs reuse them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobstore.client import BlobClient
from tests.bridge_processes import BridgeProcess
from tests.processes import ServerProcess
from tests.stepflow_sdk.runtime import HttpRuntime, StandInRuntime, StdioRuntime

ROOT = Path(__file__).resolve().parents[2]
RELEASES = ("0.7", "0.9")


@pytest.fixture(scope="session")
def sdk_pythons() -> dict[str, Path]:
    """The python of each stepflow-py release's venv, by release ("0.7", "0.9")."""
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stepflow_sdk_venv.py"), *RELEASES],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return dict(zip(RELEASES, map(Path, made.stdout.split()), strict=True))


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("sdk-server")
    server = ServerProcess(directory / "data", directory / "server.log").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def sdk_grpc(sdk_server: ServerProcess) -> Iterator[BlobClient]:
    with BlobClient(sdk_server.target, timeout=30) as client:
        yield client


@pytest.fixture(scope="module", params=["0.7-stdio", "0.9-http"])
def runtime(
    request: pytest.FixtureRequest,
    sdk_pythons: dict[str, Path],
    sdk_server: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StandInRuntime]:
    """stepflow-py 0.7 over stdio or 0.9 over Streamable HTTP, served by our bridge."""
    release, transport = str(request.param).split("-")
    directory = tmp_path_factory.mktemp(f"sdk-{release}")
    bridge: BridgeProcess | None = None
    running: StandInRuntime
    if transport == "stdio":
        running = StdioRuntime(sdk_pythons[release], directory, sdk_server.target)
    else:
        bridge = BridgeProcess(sdk_server.target, directory / "bridge.log").start()
        running = HttpRuntime(sdk_pythons[release], directory, bridge.url)
    try:
        yield running.start()
    finally:
        running.close()
        if bridge is not None:
            bridge.kill()
