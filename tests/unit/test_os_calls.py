"""The file-system helpers under the store, on real files: writes of any number of pieces
(IOV_MAX), the one way blob files are opened, and the copy comparison of re-puts."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from blobstore.model import BlobType
from blobstore.storage.filesystem.blob_file import FileContent, encode_header, same_content
from blobstore.storage.filesystem.journal import Journal, encode_record, read_segment
from blobstore.storage.filesystem.os_calls import (
    IOV_MAX,
    NotRegularFile,
    open_regular,
    write_all,
)


def pieces(count: int) -> list[bytes]:
    return [i.to_bytes(4, "big") * (1 + i % 3) for i in range(count)]


def test_one_writev_refuses_more_than_iov_max_pieces(tmp_path: Path) -> None:
    """What the store ran into (issue 10, point 2): the kernel's limit is real."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as refused:
            os.writev(fd, pieces(IOV_MAX + 1))
        assert refused.value.errno == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize("count", [0, 1, IOV_MAX, IOV_MAX + 1, 4500])
@pytest.mark.parametrize("at_offset", [False, True])
def test_write_all_writes_any_number_of_pieces_in_order(
    tmp_path: Path, count: int, at_offset: bool
) -> None:
    parts = pieces(count)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if at_offset:
            os.write(fd, b"head")
            written = write_all(fd, parts, 4)
        else:
            written = write_all(fd, parts)
    finally:
        os.close(fd)
    expected = b"".join(parts)
    assert written == len(expected)
    assert (tmp_path / "f").read_bytes() == (b"head" if at_offset else b"") + expected


def test_write_all_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writev the kernel cuts short (a signal, a disk filling up) is finished piece by piece."""
    real_writev = os.writev

    def short_writev(fd: int, buffers: Sequence[bytes]) -> int:
        return real_writev(fd, [bytes(buffers[0])[:1]])  # only one byte each time

    monkeypatch.setattr(os, "writev", short_writev)
    parts = pieces(IOV_MAX + 7)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert write_all(fd, parts) == len(b"".join(parts))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(parts)


def test_a_journal_append_of_1500_records_reads_back(tmp_path: Path) -> None:
    """One group commit of 1,500 small puts is 4,500 pieces: it is written and replayable."""
    journal = Journal(tmp_path / "journal")
    journal.open()
    contents = [os.urandom(100 + i % 50) for i in range(1500)]
    parts: list[bytes] = []
    for index, data in enumerate(contents):
        parts += encode_record(index.to_bytes(32, "big"), BlobType.BINARY, data)
    journal.append(parts)
    [segment] = journal.close()
    records = read_segment(segment).records
    assert [record.data for record in records] == contents
    assert not read_segment(segment).damaged


# -- open_regular ---------------------------------------------------------------------------


def test_open_regular_opens_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    fd, stat = open_regular(tmp_path / "f")
    os.close(fd)
    assert stat.st_size == 5


def test_open_regular_refuses_everything_else_at_once(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")  # a plain open would wait for a writer forever
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp")) / "s"  # AF_UNIX paths are short
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(short))
        expected = {
            "folder": "a folder",
            "fifo": "a FIFO",
            "link": "a symbolic link",
            "dangling": "a symbolic link",
        }
        for name, kind in expected.items():
            with pytest.raises(NotRegularFile, match=kind):
                open_regular(tmp_path / name)
        with pytest.raises(NotRegularFile, match="a socket"):
            open_regular(short)
    finally:
        listener.close()
        short.unlink()
        short.parent.rmdir()
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        open_regular(tmp_path / "target" / "below")


# -- same_content ---------------------------------------------------------------------------


def blob_file(path: Path, content: bytes, header: bool = True, tail: bytes = b"") -> int:
    head = encode_header(BlobType.BINARY, len(content)) if header else b"\0" * 20
    path.write_bytes(head + content + tail)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("size", [0, 1, 5000, 3 * 1024 * 1024 + 7])
def test_same_content_compares_with_bytes_and_with_another_file(tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    stored = blob_file(tmp_path / "stored", content)
    temp = blob_file(tmp_path / "temp", content, header=False)
    try:
        assert same_content(stored, size, content)
        assert same_content(stored, size, FileContent(temp, size))
        if size:
            flipped = content[:-1] + bytes([content[-1] ^ 1])
            assert not same_content(stored, size, flipped)
            other = blob_file(tmp_path / "other", flipped, header=False)
            try:
                assert not same_content(stored, size, FileContent(other, size))
            finally:
                os.close(other)
        assert not same_content(stored, size, content + b"!")
    finally:
        os.close(stored)
        os.close(temp)


def test_same_content_of_a_temp_file_counts_its_content_only(tmp_path: Path) -> None:
    """A streamed put's temp file with its header and a metadata block written after the
    content still matches; one whose content is longer (the stored copy a prefix) does not."""
    content = os.urandom(3000)
    stored = blob_file(tmp_path / "stored", content)
    headed = blob_file(tmp_path / "headed", content, tail=b"metadata block")
    prefix = blob_file(tmp_path / "prefix", content[:2000])
    try:
        assert same_content(stored, len(content), FileContent(headed, len(content)))
        assert not same_content(prefix, 2000, FileContent(headed, len(content)))
    finally:
        for fd in (stored, headed, prefix):
            os.close(fd)


def test_same_content_with_an_empty_temp_file_not_yet_headed(tmp_path: Path) -> None:
    stored = blob_file(tmp_path / "stored", b"")
    (tmp_path / "temp").write_bytes(b"")
    temp = os.open(tmp_path / "temp", os.O_RDONLY)
    try:
        assert same_content(stored, 0, FileContent(temp, 0))
    finally:
        os.close(stored)
        os.close(temp)
