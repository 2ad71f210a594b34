"""One measurement, one process: each build, fidelity pass and latency measurement runs in a fresh child.

Isolation buys three things: no runtime's thread pool or allocator state leaks into another's
numbers, the peak memory is that of one runner alone, and a runtime that segfaults or hangs costs one
row, not the run. The parent pins the thread count (the runner's own setting plus the OpenMP/MKL/BLAS
variables), reads progress lines from the child's stdout, keeps its stderr in a log file, and turns
a signal, an exit code or a timeout into a reason a person can act on.

Where the OS forks (Linux), children are forked from a warm server that has imported numpy and
modelport once but no runtime and has run nothing: each child still starts with no runtime loaded and
no thread pool created, without paying its imports per measurement. An artifact's runner needs numpy
and its runtime only, so its children come from a server without torch and never hold it; the PyTorch
reference, user runners and probes come from one that has also imported torch (~2 s once, not per
child); exports and builds from one that has also imported the module of the model's factory, so
that the builds of a `transformers` model do not each pay its ~5 s import. Elsewhere each child is a
fresh `python -m modelport.harness.worker JOB`.

For interleaved timing (`--rounds`), a LiveChild is a fresh process that loads its runner and then
answers one command at a time on its stdin (`@@modelport-reply JSON` lines back), so many runners can
stay loaded, each in its own process, while only one of them runs.

The job file is a `Job` (jobs.py) as JSON, with the `threads` to pin and the `result` path the child
(worker.py) writes its result JSON to.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelport.harness.jobs import Job
from modelport.harness.runners import needs_torch

PROGRESS_PREFIX = "@@modelport-progress "
STARTED_PREFIX = "@@modelport-started "
EXIT_PREFIX = "@@modelport-exit "
REPLY_PREFIX = "@@modelport-reply "
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
LOG_TAIL_LINES = 6


@dataclass
class Outcome:
    """What came back from one child: its result, or why there is none."""

    ok: bool
    result: dict[str, Any] | None
    error: str | None
    returncode: int | None
    seconds: float
    log: Path


def thread_env(threads: int) -> dict[str, str]:
    """The environment a child runs in: this one, with every common thread-count variable pinned."""
    env = dict(os.environ)
    env.update({var: str(threads) for var in THREAD_VARS})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-LOG_TAIL_LINES:])


def _crash_site(log: Path) -> str:
    """Where a crashed child was: faulthandler's innermost Python frame, as `file:line in function`."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for i, line in enumerate(lines):
        if "most recent call first" in line:
            for frame in lines[i + 1:]:
                m = re.match(r'\s*File "(.+)", line (\d+) in (\S+)', frame)
                if m:
                    return f"at {m.group(1)}:{m.group(2)} in {m.group(3)}"
    return ""


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _outcome(returncode: int | None, timed_out: bool, timeout: float, result_path: Path, job_path: Path,
             log: Path, seconds: float) -> Outcome:
    result = None
    if result_path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            result = json.loads(result_path.read_text())
    job_path.unlink(missing_ok=True)
    result_path.unlink(missing_ok=True)
    if timed_out:
        return Outcome(False, None, f"timed out after {timeout:g} s and was killed", returncode, seconds, log)
    if returncode is None:
        tail = _log_tail(log)
        return Outcome(False, None, "the measuring server died" + (f" ({tail})" if tail else ""), None, seconds, log)
    if returncode < 0:
        site = _crash_site(log)
        error = f"the measuring process was killed by {_signal_name(returncode)}" + (f" {site}" if site else "")
        return Outcome(False, None, error, returncode, seconds, log)
    if result is None or not result.get("ok"):
        error = (result or {}).get("error") or f"the measuring process exited with code {returncode}"
        tail = _log_tail(log) if result is None else ""
        return Outcome(False, result, error + (f" ({tail})" if tail else ""), returncode, seconds, log)
    return Outcome(True, result, None, returncode, seconds, log)


def _write_job(path: Path, job: Job, threads: int, result_path: Path) -> dict[str, Any]:
    """The job file a child reads: the job, the threads to pin, where to write the result."""
    data = {**job.to_json(), "threads": threads, "result": str(result_path)}
    path.write_text(json.dumps(data, default=str))
    return data


def _progress_line(line: str, progress: Callable[[float, float], None] | None) -> None:
    if progress:
        done, total = line[len(PROGRESS_PREFIX):].split()
        progress(float(done), float(total))


def factory_modules(job: Mapping[str, Any]) -> tuple[str, ...]:
    """The module of the model's factory (`package.module:fn`) for a job (as JSON) that loads the model, else ()."""
    module, colon, _ = str((job.get("model") or {}).get("origin", "")).rpartition(":")  # split as the loader does
    if colon and all(part.isidentifier() for part in module.split(".")):
        return (module,)
    return ()


def server_modules(job: Mapping[str, Any]) -> tuple[str, ...]:
    """What the server that forks `job`'s process has imported: torch where the job needs it, and the model
    factory's module for a job that loads the model."""
    return ("torch", *factory_modules(job)) if needs_torch(job) else ()


class Executor(Protocol):
    """What runs the bench's jobs and says how each went: the Isolator here, cluster.Cluster on a Ray cluster."""

    def run(self, job: Job, *, name: str, timeout: float,
            progress: Callable[[float, float], None] | None = None) -> Outcome: ...


class Isolator:
    """Runs jobs one at a time, each in its own process, with the thread count pinned for all of them."""

    def __init__(self, workdir: Path, threads: int, *, fork: bool | None = None) -> None:
        self.workdir = workdir
        self.threads = threads
        self.fork = sys.platform == "linux" if fork is None else fork
        self._servers: dict[tuple[str, ...], subprocess.Popen[str]] = {}  # by the modules each has imported

    def __enter__(self) -> Isolator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for modules in list(self._servers):
            self._stop(modules)

    def _stop(self, modules: tuple[str, ...]) -> None:
        server = self._servers.pop(modules, None)
        if server is None:
            return
        with contextlib.suppress(OSError):
            assert server.stdin is not None
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    def run(self, job: Job, *, name: str, timeout: float,
            progress: Callable[[float, float], None] | None = None) -> Outcome:
        """Run `job` in a fresh process and wait for it (at most `timeout` seconds)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        job_path, result_path = self.workdir / f"{name}.job.json", self.workdir / f"{name}.result.json"
        log = self.workdir / f"{name}.log"
        result_path.unlink(missing_ok=True)
        data = _write_job(job_path, job, self.threads, result_path)
        start = time.perf_counter()
        if self.fork:
            returncode, timed_out = self._forked(job_path, log, timeout, progress, server_modules(data))
        else:
            returncode, timed_out = self._spawned(job_path, log, timeout, progress)
        outcome = _outcome(returncode, timed_out, timeout, result_path, job_path, log, time.perf_counter() - start)
        if outcome.ok and log.is_file() and log.stat().st_size == 0:
            log.unlink()  # keep the logs that say something
        return outcome

    def _spawned(self, job_path: Path, log: Path, timeout: float,
                 progress: Callable[[float, float], None] | None) -> tuple[int | None, bool]:
        with open(log, "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "modelport.harness.worker", str(job_path)],
                                    stdout=subprocess.PIPE, stderr=log_file, text=True, env=thread_env(self.threads))
            timed_out = threading.Event()
            timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
            timer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith(PROGRESS_PREFIX):
                        _progress_line(line, progress)
                    else:
                        log_file.write(line)
                return proc.wait(), timed_out.is_set()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                timer.cancel()

    def _start_server(self, modules: tuple[str, ...]) -> subprocess.Popen[str]:
        server = self._servers.get(modules)
        if server is None or server.poll() is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            with open(self.workdir / "server.log", "a") as server_log:
                server = subprocess.Popen([sys.executable, "-m", "modelport.harness.worker", "--serve", *modules],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=server_log,
                                          text=True, env=thread_env(self.threads))
            self._servers[modules] = server
        return server

    def _forked(self, job_path: Path, log: Path, timeout: float, progress: Callable[[float, float], None] | None,
                modules: tuple[str, ...]) -> tuple[int | None, bool]:
        server = self._start_server(modules)
        assert server.stdin is not None and server.stdout is not None
        log.write_text("")
        pid: list[int] = []
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            if not pid:
                server.kill()
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid[0], signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        try:
            server.stdin.write(f"{job_path}\t{log}\n")
            server.stdin.flush()
            timer.start()
            with open(log, "a") as log_file:
                while line := server.stdout.readline():
                    if line.startswith(PROGRESS_PREFIX):
                        _progress_line(line, progress)
                    elif line.startswith(STARTED_PREFIX):
                        pid.append(int(line[len(STARTED_PREFIX):]))
                    elif line.startswith(EXIT_PREFIX):
                        return int(line[len(EXIT_PREFIX):]), timed_out.is_set()
                    else:
                        log_file.write(line)
        except BrokenPipeError:
            pass
        except BaseException:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid[0], signal.SIGKILL)
            self._stop(modules)
            raise
        finally:
            timer.cancel()
        self._stop(modules)  # the server died; the next job starts a new one
        return None, timed_out.is_set()


class LiveChild:
    """A measuring process that stays loaded and answers commands (worker `rounds` task), for interleaving.

    Always a fresh `python -m modelport.harness.worker` (never forked from the server, which runs one
    child at a time). `ask` sends one JSON command and waits at most `timeout` for the reply; a child that
    dies or overruns is killed and `ask` raises ChildGone with the reason, as `Isolator.run` words it.
    """

    def __init__(self, job: Job, *, workdir: Path, name: str, threads: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.job_path, self.result_path = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
        self.log = workdir / f"{name}.log"
        self.result_path.unlink(missing_ok=True)
        _write_job(self.job_path, job, threads, self.result_path)
        self._start = time.perf_counter()
        self._log_file = open(self.log, "w")  # noqa: SIM115 - open as long as the child lives
        self.proc = subprocess.Popen([sys.executable, "-m", "modelport.harness.worker", str(self.job_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, text=True,
                                     env=thread_env(threads))
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ask(self, command: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
        """Send `command` (None: only wait for the next reply) and return the child's reply."""
        try:
            if command is not None:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(command) + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone: reading below says why
        deadline = time.perf_counter() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                raise ChildGone(self._finish(timed_out=True, timeout=timeout)) from None
            if line is None:
                outcome = self._finish(timed_out=False, timeout=timeout)
                outcome.ok, outcome.error = False, outcome.error or "the measuring process exited before answering"
                raise ChildGone(outcome)
            if line.startswith(REPLY_PREFIX):
                return dict(json.loads(line[len(REPLY_PREFIX):]))
            if not line.startswith(PROGRESS_PREFIX):
                self._log_file.write(line)

    def finish(self, timeout: float) -> Outcome:
        """Ask the child to write its result and exit; what it said, or why it could not."""
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "finish"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self._finish(timed_out=True, timeout=timeout)
        return self._finish(timed_out=False, timeout=timeout)

    def kill(self) -> None:
        """Stop the child now (the bench was interrupted or failed); its job files go with it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._finish(timed_out=False, timeout=0)

    def _finish(self, *, timed_out: bool, timeout: float) -> Outcome:
        if timed_out or self.proc.poll() is None:
            self.proc.kill()
        returncode = self.proc.wait()
        self._log_file.close()
        outcome = _outcome(returncode, timed_out, timeout, self.result_path, self.job_path, self.log,
                           time.perf_counter() - self._start)
        if outcome.ok and self.log.is_file() and self.log.stat().st_size == 0:
            self.log.unlink()
        return outcome


class ChildGone(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def run_isolated(job: Job, *, threads: int, workdir: Path, name: str, timeout: float,
                 progress: Callable[[float, float], None] | None = None, fork: bool | None = None) -> Outcome:
    """Run one job in its own process (for a series of jobs, keep an Isolator open instead)."""
    with Isolator(workdir, threads, fork=fork) as isolator:
        return isolator.run(job, name=name, timeout=timeout, progress=progress)
