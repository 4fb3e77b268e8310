"""The local file-system backend, split by concern; backend.py lists the modules."""

from blobstore.storage.filesystem.backend import (
    JOURNAL_MAX_BLOB_BYTES,
    DataFolderLocked,
    FileSystemBackend,
)
from blobstore.storage.filesystem.layout import FileSystemLayout

__all__ = ["JOURNAL_MAX_BLOB_BYTES", "DataFolderLocked", "FileSystemBackend", "FileSystemLayout"]
