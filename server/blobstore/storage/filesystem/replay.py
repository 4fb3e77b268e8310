"""Start-up replay of the group-commit journal a crash left behind.

Before the first request is served, every blob a leftover segment holds is
made sure to be filed and sound (a broken copy is quarantined and rewritten),
everything filed is synced, and the segments are deleted. A damaged segment
goes to quarantine/ after what could be read: its cut-off tail is a batch the
crash interrupted, never acknowledged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from blobstore.ids import blob_id_from_digest
from blobstore.storage.filesystem.blob_file import check_file
from blobstore.storage.filesystem.journal import Journal, JournalRecord, read_segment
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.os_calls import syncfs_available
from blobstore.storage.filesystem.publish import Publisher

log = logging.getLogger(__name__)


def replay(
    journal: Journal,
    layout: FileSystemLayout,
    publisher: Publisher,
    sync_all: Callable[[], None],
) -> None:
    """Files the blobs of every leftover segment durably, then deletes the segments."""
    segments = journal.segments()
    if not segments:
        return
    restored = checked = 0
    damaged = []
    for segment in segments:
        contents = read_segment(segment)
        for record in contents.records:
            checked += 1
            restored += _restore(layout, publisher, record)
        if contents.damaged:
            damaged.append((segment, contents.valid_bytes, contents.total_bytes))
    if syncfs_available():
        sync_all()  # blobs filed before the crash but never synced
    else:
        os.sync()
    for segment, valid, total in damaged:
        target = layout.move_aside(segment, label="journal-")
        log.warning(
            "journal segment %s: bytes %d..%d are cut short or broken and were not "
            "replayed (kept as %s)",
            segment.name,
            valid,
            total,
            target,
        )
    for segment in segments:
        journal.retire(segment)
    log.info(
        "replayed %d journal segment(s): %d blob(s) checked, %d restored",
        len(segments),
        checked,
        restored,
    )


def _restore(layout: FileSystemLayout, publisher: Publisher, record: JournalRecord) -> int:
    """Makes sure the blob of a journal record is filed and sound; 1 if it had to be."""
    blob_id = blob_id_from_digest(record.digest.hex())
    path = layout.path_of(blob_id)
    if os.path.lexists(path):
        problem = check_file(path, blob_id)
        if problem is None:
            return 0
        layout.quarantine(blob_id, f"found by journal replay: {problem}")
    publisher.store(blob_id, record.blob_type, record.data, record.meta, check=False)
    return 1
