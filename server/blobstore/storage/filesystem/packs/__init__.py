"""The pack store of small blobs (`--small-blob-store packs`): records in append-only
segments instead of a file per blob.

    segment.py     the on-disk format: records, tombstones, reading a segment back
    index.py       digest -> record location, and the segments' shared descriptors
    appender.py    the one writer: appends to the active segment, one fdatasync each
    store.py       start-up, reads, quarantine, delete, listing
    reads.py       reads for the event loop: in the page cache right there, else on the pool
    compact.py     copying a mostly-dead segment's live records forward, dropping it
    index_file.py  a sealed segment's entries, so start-up need not read the segment
    commit_log.py  the store as the group committer's log
    scrub.py       `blobstore verify` of the segments
"""

from blobstore.storage.filesystem.packs.commit_log import PackCommitLog
from blobstore.storage.filesystem.packs.compact import Compactor
from blobstore.storage.filesystem.packs.reads import PackReads
from blobstore.storage.filesystem.packs.store import PackStore

__all__ = ["Compactor", "PackCommitLog", "PackReads", "PackStore"]
