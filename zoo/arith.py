"""What arithmetic this CPU offers: the flags that decide which inference path can be fast.

``cpu_capabilities()`` reads ``/proc/cpuinfo`` (Linux; elsewhere the flags are unknown) and asks torch which
vector ISA its kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``,
``AVX512`` ...). ``zoo bench detection`` prints it above its ratios, since they depend on it: bf16 convolutions
are fast only with AVX512-BF16 or AMX-BF16, int8 ones with VNNI or AMX-INT8.
"""

from __future__ import annotations

import os

__all__ = ["FLAGS", "cpu_capabilities", "cpu_flags", "describe"]

# the /proc/cpuinfo flags that matter for fp32 / bf16 / int8 convolutions and matrix products
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The flags of the first processor in ``/proc/cpuinfo`` (or of ``cpuinfo``, its text); None if unknown."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_capabilities(cpuinfo: str | None = None) -> dict:
    """``{"torch_isa", "flags": {flag: bool | None}, "bf16", "int8", "cores", "model"}``.

    ``bf16`` / ``int8``: the CPU has native bf16 (AVX512-BF16 or AMX-BF16) / int8 dot products (VNNI or
    AMX-INT8); None where the flags cannot be read."""
    import torch

    flags = cpu_flags(cpuinfo)
    model = ""
    text = cpuinfo
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    has = {f: (None if flags is None else f in flags) for f in FLAGS}
    any_of = lambda *names: None if flags is None else any(has[n] for n in names)  # noqa: E731
    return {
        "torch_isa": torch.backends.cpu.get_cpu_capability(),
        "flags": has,
        "bf16": any_of("avx512_bf16", "amx_bf16"),
        "int8": any_of("avx512_vnni", "avx_vnni", "amx_int8"),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "model": model,
    }


def describe(caps: dict) -> str:
    """One line: ``CPU: <model>, torch ISA AVX512, 2 cores (2 torch threads); flags avx2 ... (not: amx_int8)``."""
    flags = caps["flags"]
    if any(v is None for v in flags.values()):
        listed = "flags unknown"
    else:
        listed = "flags " + (" ".join(f for f, v in flags.items() if v) or "none")
        lack = [f for f, v in flags.items() if not v]
        if lack:
            listed += f" (not: {' '.join(lack)})"
    return (f"CPU: {caps['model'] or 'unknown model'}, torch ISA {caps['torch_isa']}, {caps['cores']} cores "
            f"({caps['threads']} torch threads); {listed}")
