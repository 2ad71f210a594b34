"""Calibration streams from disk: iterating a source far larger than memory keeps the process's memory flat.

Each source is written here without holding it in memory (sparse .npy files, a deflate stream written
in chunks, a generator), then read end to end in a fresh process (every batch, and the fingerprint,
which conforms and checks every sample) while its peak RSS is measured against its RSS before reading
(on Linux the peak is reset first, so import-time peaks do not count).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROW = (256, 1024)  # one float32 sample: 1 MiB
MIB = 1 << 20

READER = textwrap.dedent('''
    import json, resource, sys, time
    import psutil
    from modelport.calibration import open_evaluation
    from modelport.specs import TensorSpec

    def reset_peak():  # Linux: make VmHWM (peak RSS) start again from the current RSS
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def peak(exact):
        if exact:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # since start: an upper bound

    specs = [TensorSpec("x", ("batch", 256, 1024), "float32")]
    calibration = open_evaluation(sys.argv[1], specs)
    exact = reset_peak()
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    rows = sum(len(b["x"]) for b in calibration.batches(8))
    fingerprint = calibration.fingerprint
    print(json.dumps({"rows": rows, "samples": len(calibration), "growth": peak(exact) - before, "exact": exact,
                      "seconds": time.perf_counter() - start, "fingerprint": fingerprint}))
''')


def _read_in_subprocess(source: str) -> dict:
    done = subprocess.run([sys.executable, "-c", READER, source], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sparse_npy(path: Path, rows: int) -> None:
    """A float32 .npy of `rows` 1 MiB samples, mostly holes on disk; a few rows carry data."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *ROW))
    array[:: max(rows // 8, 1)] = 1.5
    array.flush()
    del array


def _deflated_npz(path: Path, rows: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(member, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rows, *ROW)})
        chunk = np.full(ROW, 0.25, np.float32).tobytes()
        for _ in range(rows):
            member.write(chunk)


def _source(kind: str, root: Path) -> tuple[str, int]:
    if kind == "npy-2GiB":
        _sparse_npy(root / "big.npy", 2048)
        return str(root / "big.npy"), 2048
    if kind == "npy-dir-512MiB":
        (root / "dir").mkdir()
        for i in range(128):
            _sparse_npy(root / "dir" / f"{i:04}.npy", 4)  # 128 files of one 4-sample batch
        return str(root / "dir"), 512
    if kind == "npz-deflated-256MiB":
        _deflated_npz(root / "c.npz", 256)
        return str(root / "c.npz"), 256
    fns = root / "gen.py"
    fns.write_text("import numpy as np\n"
                   "def stream():\n"
                   "    for i in range(512):\n"
                   "        yield {'x': np.full((1, 256, 1024), i, np.float32)}\n")
    return f"{fns}:stream", 512


@pytest.mark.parametrize("kind", ["npy-2GiB", "npy-dir-512MiB", "npz-deflated-256MiB", "callable-512MiB"])
def test_reading_a_large_source_keeps_memory_flat(tmp_path, kind):
    source, rows = _source(kind, tmp_path)
    result = _read_in_subprocess(source)
    assert result["rows"] == result["samples"] == rows
    size = rows * MIB
    assert result["growth"] < min(128 * MIB, size / 4), f"peak RSS grew {result['growth'] / MIB:.0f} MiB"
