"""The object-store backend (S3 and compatible stores: SeaweedFS, MinIO, Ceph), via obstore.

One concern per module: `location.py` (the URL, settings, timeouts and retries),
`keys.py` (object names), `metadata.py` (type and size as user metadata),
`errors.py` (store failures → our errors), `backend.py` (the BlobBackend: life
cycle, conditional puts, reads, quarantine), `writer.py` (streamed puts),
`read.py` (streamed reads). docs/scale-out.md explains the design.
"""

from blobstore.storage.objectstore.backend import ObjectStoreBackend
from blobstore.storage.objectstore.location import BadStorageUrl, Location, is_object_store, parse

__all__ = ["BadStorageUrl", "Location", "ObjectStoreBackend", "is_object_store", "parse"]
