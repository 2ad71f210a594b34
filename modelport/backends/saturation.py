"""Whether this machine's 8-bit CPU kernels can saturate: x86 without VNNI multiplies u8 by s8 with VPMADDUBSW,
whose 16-bit pair sums clamp when weights use all 8 bits (ONNX Runtime's MLAS and OpenVINO's oneDNN alike)."""

from __future__ import annotations

import platform

from modelport.machine import cpu_flags

VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def int8_saturates(flags: frozenset[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """Whether 8-bit weights can saturate this CPU's int8 dot products, and why."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine not in X86:
        return False, f"{machine}: int8 dot products accumulate in 32 bits"
    vnni = sorted(flags & VNNI)
    if vnni:
        return False, f"{', '.join(vnni)}: u8s8 dot products accumulate in 32 bits without saturation"
    simd = "AVX2" if "avx2" in flags else "SSE"
    return True, (f"{simd} without VNNI: the 8-bit kernels multiply with VPMADDUBSW, whose 16-bit pair sums "
                  "saturate with 8-bit weights")
