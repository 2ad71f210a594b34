"""Output directories, staging, reuse, disk and filesystem faults, interrupted and concurrent builds.

Nothing of the user's is replaced or deleted, a damaged artifact is never reused or loaded as if whole,
and every OS failure is an exit-1/2 message naming the path and the cause, never "a modelport bug".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelport.artifact import Artifact
from modelport.errors import BadInput
from modelport.loading import load_artifact
from tests.models import MLP
from tests.test_cli import invoke
from tests.test_harness_report import labelled_rows, run_record, write

REPO = Path(__file__).resolve().parents[2]
# About 1 MB of weights: more than the small filesystems below hold.
BIG = '''
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 3)), (torch.randn(2, 512),)
'''


def text(result) -> str:
    return " ".join(result.output.split())


def siblings(out: Path) -> list[str]:
    """The hidden staging names modelport leaves beside `out` (none, after any build)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str) -> Iterator[Path]:
    """A small filesystem of its own at `folder` (another device than the temp dir), or the test is skipped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def cli_process(*args: str) -> subprocess.Popen:
    """The modelport command in a process of its own, to kill or to run beside another."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "modelport.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def assert_runs(path: Path) -> None:
    runner = load_artifact(path)
    out = runner.run({"input": np.zeros((4, 10), np.float32)})
    assert next(iter(out.values())).shape == (4, 3)


# ---------------------------------------------------------------- what may be replaced


def test_a_directory_with_a_manifest_that_is_not_modelports_is_refused_and_kept(tmp_path, write_model):
    out = tmp_path / "p"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "app"}')
    (out / "important.py").write_text("src\n")
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out))
    assert result.exit_code == 2, result.output
    assert str(out) in text(result) and "not a modelport artifact" in text(result)
    assert (out / "important.py").read_text() == "src\n"
    assert (out / "manifest.json").read_text() == '{"name": "app"}'
    assert siblings(out) == []


def test_files_the_user_put_into_an_artifact_are_refused_not_deleted(tmp_path, write_model):
    out = tmp_path / "art"
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out)).exit_code == 0
    (out / "notes.txt").write_text("mine\n")
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out), "--force")
    assert result.exit_code == 2, result.output
    assert "notes.txt" in text(result) and str(out) in text(result) and "move those files out" in text(result)
    assert (out / "notes.txt").read_text() == "mine\n"
    (out / "notes.txt").unlink()
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out), "--force").exit_code == 0


def test_the_current_directory_as_output_is_refused(tmp_path, write_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", ".")
    assert result.exit_code == 2, result.output
    assert "current directory" in text(result) and "-o artifact" in text(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_model.py"]


@pytest.mark.parametrize("command", ["build", "export"])
def test_an_output_under_a_file_names_the_file(tmp_path, write_model, command):
    (tmp_path / "somefile").write_text("keep\n")
    out = tmp_path / "somefile" / ("x.onnx" if command == "export" else "x")
    extra = ["-b", "onnxruntime"] if command == "build" else []
    result = invoke(command, write_model(MLP), *extra, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert f"'{tmp_path / 'somefile'}' is a file, not a directory" in text(result)
    assert "internal error" not in result.output
    assert (tmp_path / "somefile").read_text() == "keep\n"


def test_report_to_an_existing_file_is_refused_and_keeps_it(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()])
    target = tmp_path / "existing.html"
    target.write_text("keep\n")
    result = invoke("report", str(tmp_path), "-o", str(target))
    assert result.exit_code == 2, result.output
    assert str(target) in text(result) and "is a file" in text(result) and "internal error" not in result.output
    assert target.read_text() == "keep\n"


def test_an_output_that_is_a_link_to_an_artifact_is_rebuilt_in_its_target_and_keeps_the_link(tmp_path, write_model):
    real, link = tmp_path / "real", tmp_path / "link"
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(real)).exit_code == 0
    link.symlink_to(real)
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(link), "--force")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == real
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "user_model.py"]
    assert_runs(link)


def test_export_onto_an_existing_directory_names_it(tmp_path, write_model):
    out = tmp_path / "m.onnx"
    out.mkdir()
    result = invoke("export", write_model(MLP), "-o", str(out))
    assert result.exit_code == 2, result.output
    assert f"Is a directory while writing {out}" in text(result) and "internal error" not in result.output
    assert out.is_dir() and list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "user_model.py"]


# ---------------------------------------------------------------- names, modes, other filesystems


def test_a_240_character_output_name_builds(tmp_path, write_model):
    out = tmp_path / ("n" * 240)
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert_runs(out)
    assert siblings(out) == []


def test_a_255_byte_export_name_is_written(tmp_path, write_model):
    out = tmp_path / ("e" * 250 + ".onnx")  # 255 bytes: the longest legal name
    result = invoke("export", write_model(MLP), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [out.name, "user_model.py"]


def test_artifacts_honour_the_umask(tmp_path, write_model):
    previous = os.umask(0o022)
    try:
        assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(tmp_path / "art")).exit_code == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-dynamic"])
def test_an_output_on_another_filesystem_builds(tmp_path, write_model, precision):
    with tmpfs(tmp_path / "fs", "20m") as fs:
        out = fs / "art"
        result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-p", precision, "-o", str(out))
        assert result.exit_code == 0, result.output
        assert Artifact.open(out).precision == precision
        assert_runs(out)
        assert sorted(p.name for p in fs.iterdir()) == ["art"]


@pytest.mark.parametrize("command", ["build", "export"])
def test_a_full_disk_is_a_clear_error_that_leaves_nothing(tmp_path, write_model, command):
    with tmpfs(tmp_path / "fs", "512k") as fs:
        out = fs / ("x.onnx" if command == "export" else "x")
        extra = ["-b", "onnxruntime"] if command == "build" else []
        result = invoke(command, write_model(BIG), *extra, "-o", str(out))
        assert result.exit_code == 2, result.output
        assert "No space left on device" in text(result) and str(out) in text(result)
        assert "Free space" in text(result) and "operator" not in text(result)
        assert list(fs.iterdir()) == []


@pytest.mark.parametrize("command", ["build", "export"])
def test_a_read_only_filesystem_is_a_clear_error(tmp_path, write_model, command):
    with tmpfs(tmp_path / "fs", "1m", "ro") as fs:
        out = fs / ("x.onnx" if command == "export" else "x")
        extra = ["-b", "onnxruntime"] if command == "build" else []
        result = invoke(command, write_model(MLP), *extra, "-o", str(out))
        assert result.exit_code == 2, result.output
        assert "Read-only file system" in text(result) and str(out) in text(result)
        assert "internal error" not in result.output


def test_a_report_on_a_read_only_filesystem_is_a_clear_error(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()])
    with tmpfs(tmp_path / "fs", "1m", "ro") as fs:
        result = invoke("report", str(tmp_path), "-o", str(fs / "r"))
        assert result.exit_code == 2, result.output
        assert f"Read-only file system while writing {fs / 'r'}" in text(result)


# ---------------------------------------------------------------- damaged artifacts


def test_a_truncated_artifact_is_rebuilt_not_reused(tmp_path, write_model):
    out = tmp_path / "art"
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out)).exit_code == 0
    size = (out / "model.onnx").stat().st_size
    os.truncate(out / "model.onnx", 1000)
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "damaged" in text(result) and "model.onnx is 1000 bytes" in text(result) and "rebuilding" in text(result)
    assert "(reused)" not in result.output
    assert (out / "model.onnx").stat().st_size == size
    assert_runs(out)


def test_a_changed_byte_of_the_same_size_is_rebuilt_not_reused(tmp_path, write_model):
    out = tmp_path / "art"
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out)).exit_code == 0
    model = out / "model.onnx"
    original = model.read_bytes()
    model.write_bytes(original[:200] + bytes([original[200] ^ 1]) + original[201:])
    result = invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert "sha256 differs" in text(result)
    assert json.loads(result.stdout)["reused"] is False
    assert model.read_bytes() == original


@pytest.mark.parametrize("harm", ["delete", "truncate"])
def test_loading_or_inspecting_a_damaged_artifact_says_it_is_damaged(tmp_path, write_model, harm):
    out = tmp_path / "art"
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out)).exit_code == 0
    if harm == "delete":
        (out / "model.onnx").unlink()
    else:
        os.truncate(out / "model.onnx", 1000)
    why = "model.onnx is missing" if harm == "delete" else "model.onnx is 1000 bytes"
    result = invoke("inspect", str(out))
    assert result.exit_code == 2, result.output
    assert f"'{out}' is damaged: {why}" in text(result) and "--force" in text(result)
    with pytest.raises(BadInput, match="damaged") as info:
        load_artifact(out)
    assert why in str(info.value) and "onnxruntime version" not in str(info.value)


def test_an_empty_onnx_file_is_not_a_model(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    result = invoke("inspect", str(empty))
    assert result.exit_code == 2, result.output
    assert str(empty) in text(result) and "empty (0 bytes): not an ONNX model" in text(result)


# ---------------------------------------------------------------- interrupted and concurrent builds


def test_sigkill_during_a_build_then_the_same_build_succeeds_and_leaves_no_staging(tmp_path, write_model):
    out = tmp_path / "art"
    model = write_model(BIG)
    process = cli_process("build", model, "-b", "onnxruntime", "-p", "int8-dynamic", "-o", str(out))
    deadline = time.monotonic() + 120
    while not siblings(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    assert siblings(out), "the killed build left no staging directory to clean"
    result = invoke("build", model, "-b", "onnxruntime", "-p", "int8-dynamic", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert siblings(out) == []
    assert Artifact.open(out).precision == "int8-dynamic"


def test_a_staging_directory_of_a_live_process_is_never_cleaned(tmp_path, write_model):
    out = tmp_path / "art"
    live = tmp_path / f".art.building-{os.getpid()}-0123abcd"
    live.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".art.old-{int(dead.stdout)}-4567cdef"
    stale.mkdir()
    assert invoke("build", write_model(MLP), "-b", "onnxruntime", "-o", str(out)).exit_code == 0
    assert siblings(out) == [live.name]


def test_concurrent_builds_into_one_directory_end_as_one_valid_artifact(tmp_path, write_model):
    out = tmp_path / "art"
    model = write_model(MLP)
    processes = [cli_process("build", model, "-b", "onnxruntime", "-o", str(out), "--force") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    # the two builds, and the log.txt where both appended other packages' output
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "manifest.json", "model.onnx"]
    assert_runs(out)
    assert siblings(out) == []
