"""Shared fixtures: a real blobstore server process per test (or per module), on a free port;
and the hooks that let `exclusive` tests run alone in a parallel run (tests/machine_lock.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from blobstore.client import BlobClient
from tests import machine_lock
from tests.bridge_processes import BridgeFactory, BridgeProcess, HttpRpc, Stack, stack
from tests.processes import ServerProcess
from tests.seaweedfs import SeaweedFS
from tests.tls_certs import Pki, make_pki

_LOCK_FOLDER = pytest.StashKey[Path]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller, per worker: hands each worker the path of the run's lock."""
    config: pytest.Config = node.config
    if _LOCK_FOLDER not in config.stash:
        config.stash[_LOCK_FOLDER] = Path(tempfile.mkdtemp(prefix="blobstore-tests-"))
    node.workerinput["machine_lock"] = str(config.stash[_LOCK_FOLDER] / "machine.lock")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _LOCK_FOLDER in config.stash:
        shutil.rmtree(config.stash[_LOCK_FOLDER], ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """In an xdist worker, runs the test (set-up to tear-down) under the run's lock: shared,
    or alone if it is marked `exclusive`. Outside pytest-timeout's own wrapper, so the
    wait for the lock is not counted against the test's timeout."""
    workerinput: dict[str, Any] | None = getattr(item.config, "workerinput", None)
    if workerinput is None or "machine_lock" not in workerinput:
        return (yield)
    exclusive = item.get_closest_marker("exclusive") is not None
    with machine_lock.held(Path(workerinput["machine_lock"]), exclusive=exclusive):
        return (yield)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers on demand (data in tmp_path/data unless given); stops them at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, **kwargs: object) -> ServerProcess:
        server = ServerProcess(
            data_dir or tmp_path / "data",
            tmp_path / f"server-{len(started)}.log",
            *args,
            **kwargs,  # type: ignore[arg-type]
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[BlobClient]:
    with BlobClient(server.target, timeout=30) as blob_client:
        yield blob_client


@pytest.fixture(scope="module")
def bridge_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A real gRPC server with a real HTTP bridge in front, shared by one test module."""
    with stack(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as running:
        yield running


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[BridgeFactory]:
    """Starts `blobstore-bridge` processes on demand (HTTP on a free port, or stdio=True),
    logs in tmp_path/bridge-N.log; kills them at the end."""
    started: list[BridgeProcess] = []

    def start(target: str, *args: str, **kwargs: Any) -> BridgeProcess:
        bridge = BridgeProcess(target, tmp_path / f"bridge-{len(started)}.log", *args, **kwargs)
        started.append(bridge)
        return bridge.start()

    yield start
    for bridge in started:
        bridge.kill()


@pytest.fixture(scope="module")
def grpc_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real gRPC server shared by one test module (the stdio bridge and SDK tests start
    their bridges against it themselves)."""
    directory = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    server = ServerProcess(directory / "data", directory / "server.log").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def rpc(bridge_stack: Stack) -> HttpRpc:
    return bridge_stack.http


@pytest.fixture(scope="module")
def grpc_client(bridge_stack: Stack) -> Iterator[BlobClient]:
    """A direct gRPC client of the server behind `bridge_stack`."""
    with BlobClient(bridge_stack.server.target, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made once per run with `cryptography` (tests/tls_certs.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real SeaweedFS (`weed mini`, S3 with credentials) shared by the whole session.

    Tests that use it take a prefix of their own (`seaweedfs.url(prefix)`), so they
    never see each other's objects.
    """
    weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    weed.start()
    yield weed
    weed.stop()
