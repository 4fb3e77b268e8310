"""Shared fixtures: a real blobstore server process per test (or per module), on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.client import BlobClient
from tests.processes import ServerProcess


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
