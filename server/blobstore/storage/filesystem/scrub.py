"""The offline scrub of a data folder (`blobstore verify`): re-hash every blob, report and
quarantine bad ones. (Not to be confused with VerifyingBackend, which checks each read.)

No gRPC and no lock: it reads the folder as the server's own readers do, so it
can run while a server serves the folder. Only published files are read
(blobs/??/<hex>); puts in progress live in tmp/ until they appear, complete,
under their name, so they are never mistaken for damage. A bad file is moved
to quarantine/ with FileSystemLayout.quarantine, which checks it again after
the move and puts it back if a put replaced it with a sound copy meanwhile.
Files in the shards that are not named after a blob id are moved aside too, and
so is anything that is not a regular file (a folder, FIFO, socket or symlink), and
anything in blobs/ named like a shard that is not a folder (the folder is made again).
Pack segments (packs/) are read front to back by packs/scrub.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from blobstore.ids import BlobId
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, check_file
from blobstore.storage.filesystem.journal import Journal
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.packs.scrub import PackCheck, verify_packs

_BLOB_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Problem:
    """One bad file: where it was, what is wrong, where it went (None: left in place)."""

    path: Path
    blob_id: str | None
    reason: str
    quarantined_to: Path | None


@dataclass
class VerifyReport:
    """What a verify run found."""

    checked: int = 0
    """Blob files read in full and found sound."""
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    vanished: int = 0
    """Files that disappeared while the walk ran (quarantined by the server, for example)."""
    journal_segments: int = 0
    """Group-commit journal segments not yet checkpointed (not checked here; see journal.py)."""

    @property
    def ok(self) -> bool:
        return not self.problems


class NotADataFolder(Exception):
    """The folder is not a blobstore data folder."""


def verify_store(
    root: Path,
    *,
    quarantine: bool = True,
    on_problem: Callable[[Problem], None] | None = None,
    on_progress: Callable[[int, int | None], object] | None = None,
) -> VerifyReport:
    """Checks every blob under `root` against its id; moves bad ones aside if `quarantine`.

    `on_progress(bytes done, total)`: told after each file (its bytes, read or not);
    asking for it costs one stat of every file first, for the total.
    """
    layout = FileSystemLayout(root)
    if not layout.blobs.is_dir():
        raise NotADataFolder(f"{root} is not a blobstore data folder (it has no blobs/ folder)")
    report = VerifyReport(journal_segments=len(Journal(layout.journal).segments()))
    for shard in layout.stray_shards():
        stray = Problem(shard, None, "not a shard folder: no blob can be stored under it", None)
        if quarantine:
            stray = Problem(shard, None, stray.reason, layout.make_folder(shard))
        report.problems.append(stray)
        if on_problem is not None:
            on_problem(stray)
    paths = layout.all_blob_paths()
    sizes = [_size(path) for path in paths] if on_progress is not None else []
    total, done = sum(sizes), 0
    for index, path in enumerate(paths):
        if on_progress is not None:
            on_progress(done, total)
            done += sizes[index]
        problem = _check(layout, path, report, quarantine=quarantine)
        if problem is not None:
            report.problems.append(problem)
            if on_problem is not None:
                on_problem(problem)
    if on_progress is not None:
        on_progress(done, total)
    check = PackCheck()
    for bad in verify_packs(layout, check, quarantine=quarantine):
        problem = Problem(bad.segment, bad.blob_id, bad.reason, bad.quarantined_to)
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)
    report.checked += check.checked
    report.bytes_checked += check.bytes_checked
    return report


def _check(
    layout: FileSystemLayout, path: Path, report: VerifyReport, *, quarantine: bool
) -> Problem | None:
    name = path.name
    if not _BLOB_NAME.fullmatch(name) or path.parent.name != name[:2]:
        stray = "not a blob file: its name is not a blob id in its shard"
        return Problem(path, None, stray, layout.move_aside(path) if quarantine else None)
    blob_id = BlobId("sha256:" + name)
    reason = check_file(path, blob_id)
    if reason is None:
        report.checked += 1
        report.bytes_checked += max(0, _size(path) - HEADER_SIZE)
        return None
    if not os.path.lexists(path):
        report.vanished += 1
        return None
    if not quarantine:
        return Problem(path, blob_id, reason, None)
    moved = layout.quarantine(blob_id, reason)
    if moved is None:
        if os.path.lexists(path):  # a put replaced the bad copy with a sound one meanwhile
            report.checked += 1
        else:
            report.vanished += 1
        return None
    return Problem(path, blob_id, reason, moved)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
