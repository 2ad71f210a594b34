"""The console shows modelport's own output only: other packages' warnings, logs and native writes go to the
command's log file (--verbose shows them on stderr), --json stdout is JSON alone, and long steps report their
stages and calibration counts.

The CLI runs in a subprocess here: only a real process has the file descriptors 1 and 2 that native code writes
to, and the terminal modelport's own output must keep.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelport import progress, quiet
from modelport.backends import get_backend
from tests.models import MLP

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MARKERS = ("planted-userwarning", "planted-logging", "planted-handler", "planted-fd2", "planted-stdout")

# A user package whose import is as noisy as torchao, transformers and NNCF are: a UserWarning, a warning on a
# third-party logger (with and without a handler of its own), raw bytes on fd 2 and a print to stdout.
NOISY = '''
import logging, os, sys, warnings

import torch
from torch import nn

from modelport.errors import ModelportWarning

warnings.warn("planted-userwarning", UserWarning)
logging.getLogger("noisy.bare").warning("planted-logging")
_own = logging.getLogger("noisy.own")
_own.addHandler(logging.StreamHandler(sys.stderr))
_own.propagate = False
_own.warning("planted-handler")
os.write(2, b"planted-fd2\\n")
print("planted-stdout")
warnings.warn("planted-own-warning", ModelportWarning)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def factory():
    torch.manual_seed(0)
    return Tiny().eval(), (torch.randn(1, 4),)
'''


@pytest.fixture
def noisy(tmp_path: Path) -> str:
    """The planted package, importable as `noisypkg.mod:factory` by the CLI run in `tmp_path`."""
    package = tmp_path / "noisypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(NOISY)
    return "noisypkg.mod:factory"


def cli(tmp_path: Path, *args: str, terminal: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `modelport ARGS` in `tmp_path`; `terminal` makes rich take stderr for a terminal (progress on).
    stdout and stderr come back without colour codes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)
    if terminal:
        env["FORCE_COLOR"] = "1"
    done = subprocess.run([sys.executable, "-m", "modelport.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    done.stdout, done.stderr = ANSI.sub("", done.stdout), ANSI.sub("", done.stderr)
    return done


def test_other_packages_output_goes_to_the_builds_log_not_the_console(tmp_path: Path, noisy: str) -> None:
    out = tmp_path / "art"
    done = cli(tmp_path, "build", noisy, "-b", "onnxruntime", "-p", "int8", "--calib", "synthetic:40", "-o", str(out),
               terminal=True)
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert not [m for m in MARKERS if m in console], console
    assert "warning: planted-own-warning" in done.stderr  # modelport's own warnings stay on the console
    # and so does its progress: the build's stages, the calibration's samples seen / total
    assert "Building onnxruntime int8" in done.stderr and "calibrate" in done.stderr and "40/40" in done.stderr
    log = (out / "log.txt").read_text()
    assert log.startswith("# modelport build (")
    assert all(m in log for m in MARKERS), log
    assert "planted-own-warning" not in log


def test_verbose_shows_other_packages_output_on_stderr(tmp_path: Path, noisy: str) -> None:
    out = tmp_path / "art"
    done = cli(tmp_path, "--verbose", "build", noisy, "-b", "onnxruntime", "-p", "fp32", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert all(m in done.stderr for m in MARKERS), done.stderr
    assert json.loads(done.stdout)["path"] == str(out)  # even a print to stdout lands on stderr
    assert not (out / "log.txt").exists()


def test_a_failed_command_keeps_its_log_and_says_where(tmp_path: Path, noisy: str) -> None:
    failed = cli(tmp_path, "build", noisy, "-b", "onnxruntime", "-p", "int8", "-o", str(tmp_path / "art"))
    assert failed.returncode == 2 and "needs calibration data" in failed.stderr
    assert not [m for m in MARKERS if m in failed.stderr], failed.stderr
    named = failed.stderr.split("Other packages' output during this command (--verbose shows it here): ")[1].strip()
    assert all(m in Path(named).read_text() for m in MARKERS)
    Path(named).unlink()


def test_json_stdout_is_only_json_with_progress_on(tmp_path: Path, noisy: str) -> None:
    """NNCF draws its own progress bars on stdout; with a terminal and --json, stdout still parses."""
    backend = "openvino" if get_backend("openvino").available()[0] else "onnxruntime"
    out = tmp_path / "art"
    done = cli(tmp_path, "build", noisy, "-b", backend, "-p", "int8", "--calib", "synthetic:40", "-o", str(out),
               "--json", terminal=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["manifest"]["calibration"]["samples"] == 40
    assert "Statistics collection" not in done.stdout + done.stderr  # NNCF's bar went to the log


class Recorder:
    """A progress.Reporter that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.open: list[str] = []

    def begin(self, name: str) -> None:
        self.open.append(name)
        self.events.append(("begin", name))

    def end(self, name: str) -> None:
        assert self.open.pop() == name
        self.events.append(("end", name))

    def count(self, done: int, total: int | None) -> None:
        self.events.append(("count", self.open[-1], done, total))


def test_calibration_reports_every_sample_seen_of_the_total(tmp_path: Path, write_model) -> None:
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet
    from modelport.model import load_model

    source = load_model(write_model(MLP), dynamic=["input:0=batch"])
    samples = np.random.default_rng(7).standard_normal((37, *source.inputs[0].shape[1:])).astype(np.float32)
    calibration = CalibrationSet.from_arrays({source.inputs[0].name: samples}, source.inputs)
    with progress.reporting(Recorder()) as recorder:
        build_artifact(ModelBundle(source), "onnxruntime", "int8", tmp_path / "art", calibration=calibration,
                       options={"measure": "false"})
    counts = [e[2:] for e in recorder.events if e[0] == "count" and e[1] == "calibrate"]
    assert counts[-1] == (37, 37)
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)  # seen only grows
    begun = [e[1] for e in recorder.events if e[0] == "begin"]
    assert [s for s in ("export", "check", "calibrate", "quantize", "write") if s in begun] == \
        ["export", "check", "calibrate", "quantize", "write"]
    assert recorder.open == []


def test_a_route_restores_the_process_as_it_found_it(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """In-process (a test, a notebook): after the command, stdout, stderr, their fds and logging handlers are
    back, and what was routed is in the kept log."""
    before = (sys.stdout, sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("routed.library")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with quiet.routed("modelport test") as route:
            quiet.keep_log(tmp_path / "log.txt")
            print("routed-print")
            os.write(1, b"routed-fd1\n")
            os.write(2, b"routed-fd2\n")
            logger.warning("routed-handler")
            route.stdout.write("own-result\n")
        assert (sys.stdout, sys.stderr) == before and handler.stream is sys.stderr
        logger.warning("after-route")
    finally:
        logger.removeHandler(handler)
    seen = capfd.readouterr()
    assert "own-result" in seen.out and "after-route" in seen.err
    assert "routed" not in seen.out + seen.err
    log = (tmp_path / "log.txt").read_text()
    assert all(m in log for m in ("routed-print", "routed-fd1", "routed-fd2", "routed-handler"))
    assert not Path(str(route.log)).exists()  # the temporary file is gone once appended


def test_help_and_usage_errors_still_reach_the_console() -> None:
    """Output is routed only once a command runs: help printed while its arguments are parsed stays visible."""
    from typer.testing import CliRunner

    from modelport.cli import app

    shown = CliRunner().invoke(app, ["build", "--help"])
    assert shown.exit_code == 0 and "--backend" in shown.stdout
    wrong = CliRunner().invoke(app, ["build"])
    assert wrong.exit_code == 2 and "Missing argument" in wrong.output
