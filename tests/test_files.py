"""The one atomic writer (``maskrcnn.utils.files``): old file or new file, never a torn one, no temporary left."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from maskrcnn.errors import MaskRCNNError
from maskrcnn.utils.files import OutputError, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_bytes_text_json_and_callable_forms_write_the_content(tmp_path: Path) -> None:
    assert atomic_write_bytes(tmp_path / "deep" / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"  # folder made
    assert atomic_write_text(tmp_path / "b.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads(atomic_write_json(tmp_path / "c.json", {"k": [1, 2]}).read_text()) == {"k": [1, 2]}
    atomic_write(tmp_path / "d.bin", lambda fh: (fh.write(b"ab"), fh.write(b"cd")))
    assert (tmp_path / "d.bin").read_bytes() == b"abcd"
    atomic_write_text(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "c.json", "d.bin", "deep"]


def test_a_failing_writer_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "keep.json", "old")

    def half_then_fail(fh) -> None:  # noqa: ANN001
        fh.write(b"new but incomp")
        raise ValueError("encoder failed")

    with pytest.raises(ValueError, match="encoder failed"):  # not an output problem: passed on as it is
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]


@pytest.mark.parametrize("err,fragments", [
    (errno.ENOSPC, ("no space left on device", "free space", "--out elsewhere")),
    (errno.EDQUOT, ("no space left on device",)),
    (errno.EACCES, ("cannot write", "permission")),
    (errno.EIO, ("cannot write", "check the disk")),
])
def test_an_os_write_failure_is_one_line_naming_the_file(err: int, fragments: tuple[str, ...], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    target = atomic_write_bytes(tmp_path / "out.bin", b"old")

    def failing_fsync(fd: int) -> None:  # the data reaches the disk at fsync: where a full disk shows
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(target, b"x" * 100_000)
    monkeypatch.undo()
    message = str(info.value)
    assert isinstance(info.value, MaskRCNNError) and "\n" not in message and str(target) in message
    for fragment in fragments:
        assert fragment in message.lower()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
