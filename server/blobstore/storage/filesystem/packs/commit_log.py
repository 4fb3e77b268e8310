"""The pack store as the group committer's log (group_commit.CommitLog).

The journal's life cycle - segments retired, checkpointed with a syncfs and
deleted - has no counterpart here: a pack record is the blob's home, durable
once appended, so there is nothing to checkpoint and no removal has to wait
for one (delete appends tombstones instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from blobstore.storage.filesystem.packs.store import PackStore


class PackCommitLog:
    def __init__(self, store: PackStore) -> None:
        self._store = store

    def open(self) -> None:
        """The store was opened (read back) before the committer starts."""

    def append(self, parts: list[bytes], digests: Sequence[bytes] = ()) -> None:
        self._store.append_records(parts, digests)

    def holds_any(self, digests: Iterable[bytes]) -> bool:
        return False

    @property
    def next_sequence(self) -> int:
        return 0

    def segments_before(self, sequence: int) -> list[Path]:
        return []

    def take_retired(self) -> list[Path]:
        return []

    def close(self) -> list[Path]:
        return []

    def retire(self, segment: Path) -> None:
        raise AssertionError("pack segments are never checkpointed")
