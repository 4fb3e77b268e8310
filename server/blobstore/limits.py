"""Chunk-size bounds of the streamed calls, shared by the servicer, the guard and the app.

A GetStream request's chunk_size is clamped into [MIN_CHUNK, MAX_CHUNK]
(0 means DEFAULT_CHUNK); the gRPC message limit leaves room for MAX_CHUNK.
"""

from __future__ import annotations

DEFAULT_CHUNK = 1024 * 1024
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 4 * 1024 * 1024


def clamp_chunk_size(requested: int) -> int:
    """The chunk size a GetStream call gets for the `chunk_size` it asked (0: the default)."""
    return min(max(requested or DEFAULT_CHUNK, MIN_CHUNK), MAX_CHUNK)
