"""Fixtures shared by the unit tests of the store's rules."""

from __future__ import annotations

import pytest

from blobstore.storage.memory import MemoryBackend


@pytest.fixture
def memory() -> MemoryBackend:
    """A fresh in-memory backend: the store's rules without processes or files."""
    return MemoryBackend()
