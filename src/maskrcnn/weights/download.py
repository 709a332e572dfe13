"""Downloads into the weights cache, checked against the SHA-256 prefix in the file name; torchvision's cache reused."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..utils.files import atomic_write


def cache_dir() -> Path:
    return Path(os.environ.get("MASKRCNN_CACHE", Path.home() / ".cache" / "maskrcnn")) / "weights"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_prefix(file: str) -> str | None:
    """The hex digits after the last ``-`` of a file name (``resnet50-0676ba61.pth`` -> ``0676ba61``), None without."""
    m = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", file)
    return m.group(1) if m else None


def download(url: str, file: str, *, progress: bool = True) -> Path:
    """Return the cached path of ``file``, downloading ``url`` first if needed.

    The SHA-256 of the file must start with the hex digits after the last ``-`` in its name.
    The download goes to a temporary file renamed into place only after the check.
    """
    target = cache_dir() / file
    torch_hub = Path(torch.hub.get_dir()) / "checkpoints" / file
    for candidate in (target, torch_hub):
        if candidate.is_file():
            return candidate
    prefix = expected_prefix(file)

    def fetch(out: Any) -> None:  # into atomic_write's temporary file: kept only when complete and checked
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=file, leave=False)
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
        except (urllib.error.URLError, OSError, TimeoutError, ValueError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, urllib.error.URLError):
                raise  # writing failed (a full disk): atomic_write reports it with the file name
            reason = " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
            raise WeightsError(f"cannot download {url} ({reason}); offline? download it elsewhere and "
                               f"put the file at {target}") from None
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise WeightsError(f"{url}: SHA-256 {digest.hexdigest()[:12]}... does not start with {prefix} (corrupt or "
                               f"truncated download, nothing was kept); retry, or put a good copy at {target}")

    atomic_write(target, fetch)
    return target

