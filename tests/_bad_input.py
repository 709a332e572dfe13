"""Helpers for the bad-input suite (``tests/test_bad_input_*.py``).

Every hostile or malformed input must end in one of two ways:

* a **clean error**: the CLI exits with status 2 and prints exactly one line, ``error: ...``,
  that names the file or field (the caller passes the fragments it must contain), with no
  traceback; in the Python API a :class:`maskrcnn.errors.MaskRCNNError` whose message is one line;
* a **reported skip**: the job goes on, exits as documented, and names the bad file in what it
  prints (or in the report it writes).

``run_cli`` runs ``maskrcnn.cli.main`` in-process (fast: no interpreter start per case);
``run_cli_subprocess`` runs it in a child process, for inputs that could crash the interpreter
itself (a segfault in a C decoder must fail the test, not the test runner).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    """Exit status and captured output of one CLI run."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(*argv: str | os.PathLike[str]) -> CliResult:
    """Run ``maskrcnn ARGV`` in this process and capture its exit status, stdout and stderr."""
    from maskrcnn.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return CliResult(int(code), out.getvalue(), err.getvalue())


def run_cli_subprocess(*argv: str | os.PathLike[str], timeout: float = 300, cwd: str | os.PathLike[str] | None = None,
                       env: dict[str, str] | None = None) -> CliResult:
    """Run ``python -m maskrcnn.cli ARGV`` in a child process (a crash shows as a negative exit status)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "maskrcnn.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(result: CliResult, *fragments: str) -> str:
    """Exit status 2, no traceback, and one ``error: ...`` line containing every fragment; returns it."""
    assert result.code == 2, f"exit status {result.code}, expected 2\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    errors = [line for line in result.err_lines if line.startswith("error:") or line.startswith("maskrcnn")]
    assert len(errors) >= 1, result.err
    line = errors[-1]
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


def assert_one_line_error(exc_info: pytest.ExceptionInfo[BaseException], *fragments: str) -> str:
    """The raised :class:`MaskRCNNError` has a one-line message containing every fragment."""
    from maskrcnn.errors import MaskRCNNError

    assert isinstance(exc_info.value, MaskRCNNError), f"{type(exc_info.value).__name__}: {exc_info.value}"
    message = str(exc_info.value)
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    return message
