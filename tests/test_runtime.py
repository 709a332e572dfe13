"""engine/runtime: the device a run uses and whether the CPU has native bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskrcnn.config import ConfigError
from maskrcnn.engine import runtime


def test_resolve_device_accepts_what_exists() -> None:
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(" CPU ") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cpu")) == torch.device("cpu")
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device(None) == auto and runtime.resolve_device("auto") == auto


@pytest.mark.parametrize("spec,fragment", [
    ("bogus", "not a device name"), ("cuda:x", "not a device name"), ("", None), ("meta", "not supported"),
])
def test_resolve_device_rejects_names(spec: str, fragment: str | None) -> None:
    if fragment is None:  # empty means auto
        assert runtime.resolve_device(spec).type in ("cpu", "cuda")
        return
    with pytest.raises(ConfigError) as info:
        runtime.resolve_device(spec)
    msg = str(info.value)
    assert fragment in msg and repr(spec) in msg and "cpu" in msg and "\n" not in msg


def test_cuda_without_a_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device 'cuda': .* use --device cpu"):
        runtime.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == torch.device("cuda")  # no index: torchrun's local device
    with pytest.raises(ConfigError, match=r"has 2 CUDA GPU\(s\) \(cuda:0..cuda:1\)"):
        runtime.resolve_device("cuda:2")


@pytest.mark.parametrize("machine,capability,flags,expected", [
    ("x86_64", "AVX512", "fpu avx2 avx512f avx512_bf16", True),
    ("x86_64", "AVX512", "fpu avx2 avx512f amx_bf16 amx_tile", True),
    ("x86_64", "AVX512", "fpu avx2 avx512f avx512bw", False),   # AVX-512 without bf16: emulated
    ("x86_64", "AVX2", "fpu avx2 avx512_bf16", False),          # torch runs its AVX2 kernels
    ("aarch64", "DEFAULT", "fp asimd bf16 i8mm", True),
    ("aarch64", "SVE256", "fp asimd sve", False),
    ("riscv64", "DEFAULT", "bf16", False),
])
def test_cpu_has_fast_bf16_reads_capability_and_flags(monkeypatch: pytest.MonkeyPatch, machine: str,
                                                      capability: str, flags: str, expected: bool) -> None:
    monkeypatch.delenv(runtime.CPU_BF16_ENV)  # the suite's override (conftest): here the detection itself
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: f"processor : 0\nflags : {flags}\n")
    assert runtime.cpu_has_fast_bf16() is expected


def test_cpu_has_fast_bf16_is_false_when_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: Path, *a: object, **k: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.delenv(runtime.CPU_BF16_ENV)
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(Path, "read_text", unreadable)
    assert runtime.cpu_has_fast_bf16() is False
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1")  # the user says yes
    assert runtime.cpu_has_fast_bf16() is True


@pytest.mark.parametrize("capability,flags,native", [
    ("AVX2", "fpu avx2 fma", False),                      # AMD/Intel AVX2 only: bf16 would be emulated
    ("AVX512", "fpu avx2 avx512f avx512bw", False),       # AVX-512 without bf16 instructions
    ("AVX512", "fpu avx2 avx512f avx512_bf16", True),     # AVX512-BF16 (Cooper Lake, Zen 4)
    ("AVX512", "fpu avx2 avx512f amx_bf16 amx_tile", True),  # AMX (Sapphire Rapids and later)
])
def test_amp_auto_and_fast_mode_follow_the_cpu(monkeypatch: pytest.MonkeyPatch, capability: str, flags: str,
                                               native: bool) -> None:
    monkeypatch.delenv(runtime.CPU_BF16_ENV)
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: f"processor : 0\nflags : {flags}\n")
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if native else None
    assert runtime.resolve_amp("auto", cpu) == (expected, False)
    assert runtime.resolve_fast_dtype("auto", cpu) is expected
    # explicit choices do not depend on the CPU: bf16 is honoured (emulated where not native)
    assert runtime.resolve_amp("bf16", cpu) == (torch.bfloat16, False) and runtime.resolve_amp("none", cpu) == (None, False)
    assert runtime.resolve_fast_dtype("bf16", cpu) is torch.bfloat16 and runtime.resolve_fast_dtype("fp32", cpu) is None
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")  # the user's override wins over the detection
    assert runtime.resolve_amp("auto", cpu) == (None, False)


@pytest.mark.parametrize("bf16_supported,amp,fast", [(True, (torch.bfloat16, False), torch.bfloat16),
                                                     (False, (torch.float16, True), torch.float16)])
def test_amp_auto_and_fast_mode_on_cuda(monkeypatch: pytest.MonkeyPatch, bf16_supported: bool,
                                        amp: tuple, fast: torch.dtype) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    cuda = torch.device("cuda")
    assert runtime.resolve_amp("auto", cuda) == amp and runtime.resolve_fast_dtype("auto", cuda) is fast
    assert runtime.resolve_amp("fp16", cuda) == (torch.float16, True) and runtime.resolve_fast_dtype("fp32", cuda) is None
    if not bf16_supported:
        with pytest.raises(ConfigError, match=r"^fast_dtype=bf16: this GPU has no bfloat16 support; use fast_dtype=fp16"):
            runtime.resolve_fast_dtype("bf16", cuda)
