"""Errors meant for the user: one line that names the file or field and the fix.

The CLI prints ``error: <message>`` for these and exits with status 2, without a traceback.
"""

from __future__ import annotations

import errno as _errno


class MaskRCNNError(Exception):
    """Base of every user-facing error (bad input, bad config, missing file)."""


class DataError(MaskRCNNError, ValueError):
    """An image, mask or annotation file cannot be used; the message names the file."""


class WeightsError(MaskRCNNError, ValueError):
    """A checkpoint cannot be loaded into the configured model."""


def first_line(exc: BaseException, default: str | None = None, limit: int | None = None) -> str:
    """An exception's message in one line: the first non-blank line of ``str(exc)``, stripped;
    ``default`` when there is none (None: the exception's type name). With ``limit``, a longer line
    is cut to ``limit`` characters ending in ``...``."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), None)
    if text is None:
        text = type(exc).__name__ if default is None else default
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def one_line(message: object) -> str:
    """A message in one line: its non-blank lines, stripped, joined with ``"; "`` (the CLI's
    ``error:`` line and the server's JSON errors)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


# ---------------------------------------------------------------------------- OS errors about user paths

#: errno -> what to do, for OS errors that are about a path the user chose (not bugs).
_PATH_FIXES: dict[int, str] = {
    _errno.EACCES: "permission denied; choose a path you may use, or change its permissions",
    _errno.EPERM: "operation not permitted; choose a path you may use, or change its permissions",
    _errno.EISDIR: "is a folder where a file is needed; give a file path",
    _errno.ENOTDIR: "a part of the path is a file where a folder is needed; choose another path",
    _errno.ENOSPC: "no space left on the device; free some space or write somewhere else",
    _errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    _errno.EROFS: "read-only file system; write somewhere else",
    _errno.ENOENT: "no such file or folder; check the path",
    _errno.EEXIST: "already exists and is not what is needed here (e.g. a file where a folder is needed); "
                   "choose another path",
    _errno.ENAMETOOLONG: "file name too long; use a shorter path",
    _errno.ELOOP: "too many levels of symbolic links; check the path",
    _errno.EFBIG: "file too large for the file system; write somewhere else",
}


def user_os_error(exc: OSError) -> bool:
    """Whether ``exc`` is about a path the user gave (permissions, full disk, a folder where a file
    is expected ...) rather than a bug: then :func:`os_error_message` says what to do."""
    return exc.errno in _PATH_FIXES


def os_error_message(exc: OSError) -> str:
    """One line for an :class:`OSError`: the path(s), what went wrong and the fix."""
    fix = _PATH_FIXES.get(exc.errno or -1) or f"{exc.strerror or type(exc).__name__}"
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "while reading or writing files"
    return " ".join(f"{where}: {fix}".split())
