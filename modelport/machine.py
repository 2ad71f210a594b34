"""What machine this is: recorded in every manifest and report, and read by builds that choose per CPU."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
          "amx_int8", "avx512_bf16", "avx512_fp16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is not readable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> dict[str, Any]:
    """CPU model, cores, the SIMD flags that decide kernel choice, OS and Python."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "flags": [f for f in _FLAGS if f in cpu_flags()],
            "os": platform.platform(), "python": platform.python_version()}


def cache_dir() -> Path:
    """Where modelport keeps exports and example weights between runs (MODELPORT_CACHE)."""
    return Path(os.environ.get("MODELPORT_CACHE", Path.home() / ".cache" / "modelport"))
