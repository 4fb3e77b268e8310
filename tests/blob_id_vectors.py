"""The test vectors of docs/blob-ids.md, read from the document itself.

The document is the one place the vectors live, so the specification and the
tests cannot drift apart: tests/unit/test_canonical_json.py and tests/unit/test_ids.py
assert every row read here. Cells are Markdown code spans; `hex:` marks bytes
given in hexadecimal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "blob-ids.md"


@dataclass(frozen=True)
class ContentVector:
    """A row of "Content to id": content of a type, the bytes stored for it, its id."""

    number: int
    blob_type: str
    content: bytes
    stored: bytes
    blob_id: str


@dataclass(frozen=True)
class RejectedContent:
    """A row of "What is rejected": Json content, words of the error, its byte position."""

    content: bytes
    words: str
    position: int


@dataclass(frozen=True)
class NumberVector:
    """A row of the Appendix B table: IEEE 754 bits and the JSON text, None if rejected."""

    bits: str
    text: str | None


@dataclass(frozen=True)
class IdText:
    """A row of "The id as text": the text, and its normal form or the reason it is rejected."""

    text: str
    normal: str | None
    reason: str | None


def _document() -> str:
    return DOC.read_text(encoding="utf-8")


def _table(header: str) -> list[list[str]]:
    """The body rows of the table whose header line is `header`, as stripped cells."""
    lines = _document().splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    if not rows:
        raise AssertionError(f"table {header!r} in {DOC} has no rows")
    return rows


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    if match is None:
        raise AssertionError(f"expected a code span in {DOC}, found {cell!r}")
    return match.group(1)


def _bytes(cell: str) -> bytes:
    text = _code(cell)
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode("utf-8")


def content_vectors() -> list[ContentVector]:
    return [
        ContentVector(int(number), kind, _bytes(content), _bytes(stored), _code(blob_id))
        for number, kind, content, stored, blob_id in _table(
            "| # | Type | Content | Stored bytes | Blob id |"
        )
    ]


def rejected_content() -> list[RejectedContent]:
    return [
        RejectedContent(_bytes(content), words, int(position))
        for content, words, position in _table("| Content | Error message contains | At byte |")
    ]


def number_vectors() -> list[NumberVector]:
    return [
        NumberVector(_code(bits), None if text == "rejected" else _code(text))
        for bits, text in _table("| IEEE 754 | JSON |")
    ]


def id_texts() -> list[IdText]:
    rows = []
    for text, result in _table("| Text | Result |"):
        if result.startswith("rejected: "):
            rows.append(IdText(_code(text), None, result.removeprefix("rejected: ")))
        else:
            rows.append(IdText(_code(text), _code(result), None))
    return rows


def rfc8785_section_3_2_4_bytes() -> bytes:
    """The UTF-8 bytes RFC 8785 §3.2.4 prints for its sample (vector 1), as the doc quotes them."""
    match = re.search(r"```hex\n(.*?)```", _document(), re.DOTALL)
    if match is None:
        raise AssertionError(f"no ```hex block in {DOC}")
    return bytes.fromhex("".join(match.group(1).split()))
