"""Shared fixtures. Tests run on CPU with few threads; every test asserts concrete values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MASKRCNN_TEST_THREADS", "1")))
# ``amp: auto`` (the default) and fast mode pick bf16 on CPUs with native bf16 (AVX512-BF16, AMX)
# and fp32 on the others: the suite says "no" everywhere (child processes inherit it) so that it
# runs the same code on every CI machine; tests of the bf16 paths ask for bf16 explicitly or set it.
os.environ["MASKRCNN_CPU_BF16"] = "0"

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NUCLEI = SHARED / "data" / "nuclei"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's weight cache from tests."""
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
