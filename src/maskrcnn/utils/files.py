"""Writing files so that nothing already written is lost: the one atomic writer and output checks.

Every file the package writes for the user (checkpoints, configs, JSON results, reports, plots,
overlays) goes through :func:`atomic_write`: the content goes to a temporary file in the target's
folder, is flushed and ``fsync``-ed, renamed over the target (``os.replace``, atomic on POSIX) and
the folder is ``fsync``-ed, so a crash, a kill or a full disk leaves either the old or the new
file, never a torn one, and the temporary file is removed on any error. A write that fails for a
reason the user can fix (no space left, no permission, read-only file system) raises an
:class:`OutputError` with one line naming the file and the fix.

:func:`ensure_output_dir` / :func:`ensure_output_file` check an ``--out`` argument before a
command starts working, so a bad output place fails in a second, not after an hour.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import MaskRCNNError

__all__ = [
    "OutputError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_path",
    "output_error",
    "disk_full_as_error",
    "ensure_output_dir",
    "ensure_output_file",
]

#: errno values of a write that failed for a reason outside the program (reported in one line).
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}
_WRITE_ERRNOS = _DISK_FULL | _NOT_ALLOWED | {errno.EIO}


class OutputError(MaskRCNNError, OSError):
    """A file or folder cannot be written; the one-line message names it and the fix."""


def output_error(path: str | os.PathLike[str], exc: OSError, flag: str = "--out") -> OutputError:
    """The one-line :class:`OutputError` for ``exc`` raised while writing ``path``."""
    if exc.errno in _DISK_FULL:
        return OutputError(f"{path}: no space left on device; free space or pass {flag} elsewhere")
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _NOT_ALLOWED:
        return OutputError(f"{path}: cannot write ({reason}); check the folder's permissions or pass {flag} elsewhere")
    return OutputError(f"{path}: cannot write ({reason}); check the disk or pass {flag} elsewhere")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a written file, or a folder's entries, to disk (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically with ``write(fh)`` on a binary file handle; returns the path.

    The handle is a temporary file in ``path``'s folder (created when missing), named
    ``.<name>.tmp<pid>``. Any exception leaves the previous ``path`` untouched and removes the
    temporary file; an ``OSError`` of a full disk, a missing permission or an I/O failure becomes
    an :class:`OutputError` naming ``path`` (other exceptions, e.g. from ``write``, pass as they are).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, MaskRCNNError) and exc.errno in _WRITE_ERRNOS:
            raise output_error(path, exc) from None
        raise
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dump_options: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; ``dump_options`` go to :func:`json.dumps`."""
    return atomic_write_text(path, json.dumps(obj, **dump_options))


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike[str], flag: str = "--out") -> Iterator[None]:
    """Turn a full-disk ``OSError`` raised inside the block into one line naming the file (or ``path``)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, MaskRCNNError) or exc.errno not in _DISK_FULL:
            raise
        raise output_error(exc.filename or path, exc, flag) from None


def ensure_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create the output folder ``path`` if needed and check that files can be written in it.

    Raises an :class:`OutputError` with one line naming ``flag`` and the path when it is a file,
    lies under a file, cannot be created or is not writable. Returns the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, not a folder; pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            reason = "a part of the path is a file"
        raise OutputError(f"{flag} {path}: cannot create the folder ({reason}); pass a writable folder") from None
    probe = path / f".maskrcnn-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise output_error(path, exc, flag) from None
        raise OutputError(f"{flag} {path}: folder is not writable ({exc.strerror or exc}); "
                          "pass a writable folder") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return path


def ensure_output_file(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Check that the file ``path`` can be written: not a folder, in a writable folder (created if needed)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; pass a file name")
    ensure_output_dir(path.parent, flag=flag)
    return path
