"""The Stepflow seed's blob examples (blob-storage-methods.md), verbatim, and their real ids.

The seed shows a placeholder id (sha256:a1b2c3...); the real id of its data is
computed here independently of the server, with the rfc8785 package.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

PLACEHOLDER_ID = "sha256:a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456"

PUT_REQUEST = """\
{
  "jsonrpc": "2.0",
  "id": "put-blob-001",
  "method": "blobs/put",
  "params": {
    "data": {
      "processed_records": [
        {"id": "record_1", "data": {"name": "John", "status": "active"}}
      ],
      "metadata": {
        "timestamp": "2024-01-15T10:30:00Z",
        "version": "1.2.3"
      }
    },
    "blob_type": "Json"
  }
}
"""

PUT_RESPONSE = """\
{
  "jsonrpc": "2.0",
  "id": "put-blob-001",
  "result": {
    "blob_id": "sha256:a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456"
  }
}
"""

GET_REQUEST = """\
{
  "jsonrpc": "2.0",
  "id": "get-blob-001",
  "method": "blobs/get",
  "params": {
    "blob_id": "sha256:a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456"
  }
}
"""

GET_RESPONSE = """\
{
  "jsonrpc": "2.0",
  "id": "get-blob-001",
  "result": {
    "data": {
      "processed_records": [
        {"id": "record_1", "data": {"name": "John", "status": "active"}}
      ],
      "metadata": {
        "timestamp": "2024-01-15T10:30:00Z",
        "version": "1.2.3"
      }
    },
    "blob_type": "Json"
  }
}
"""


GET_RESPONSE_SCHEMA_NAMES = GET_RESPONSE.replace('"blob_type": "Json"', '"blob_type": "data"')
"""The seed's get example as the bridge answers by default: with the schema's type name
("data"), which the Stepflow SDKs decode, not the page's "Json" (docs/bridge.md says why)."""


def json_id(value: Any) -> str:
    """The id a Json blob of `value` must get: sha256 of its RFC 8785 form."""
    return "sha256:" + hashlib.sha256(rfc8785.dumps(value)).hexdigest()


SEED_DATA = orjson.loads(PUT_REQUEST)["params"]["data"]
SEED_ID = json_id(SEED_DATA)


def with_real_id(text: str) -> str:
    """A seed example with the placeholder id replaced by the real one."""
    assert PLACEHOLDER_ID in text
    return text.replace(PLACEHOLDER_ID, SEED_ID)


def one_line(text: str) -> bytes:
    """A pretty-printed example as one line for newline-delimited stdio: its line breaks
    become spaces (white space between tokens), everything else stays as it is."""
    return text.strip().replace("\n", " ").encode()
