"""What every command shares: the rich consoles (bound to the terminal while other packages' output is routed to a
log), progress displays, JSON output, and the option types for models and data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from modelport import progress as reporting
from modelport import quiet
from modelport.errors import BadInput

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a path in an error stays whole, to copy

ModelArg = Annotated[str, typer.Argument(help="path/to/file.py:factory, package.module:factory, or a .pt2 file.",
                                         show_default=False)]
InputOpt = Annotated[list[str] | None, typer.Option(
    "--input", "-i", help="NAME:SHAPE[:DTYPE] per model input, e.g. x:1x3x224x224:float32 (factories "
                          "that return a bare module need these).")]
DynamicOpt = Annotated[list[str] | None, typer.Option(
    "--dynamic", "-d", help="NAME:AXIS=DIM marks an input axis symbolic, e.g. x:0=batch.")]
CalibOpt = Annotated[str | None, typer.Option(
    "--calib", help="Calibration data: file.npz, a directory of .npy/.npz files, "
                    "images:DIR[?resize=256,crop=224,mean=imagenet,std=imagenet,layout=nchw], file.py:fn, "
                    "package.module:fn, or synthetic[:N] (latency only).")]
CalibSizeOpt = Annotated[int | None, typer.Option("--calib-size", help="Samples drawn from the calibration source.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling the calibration data.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def parse_pairs(values: list[str] | None, flag: str, example: str) -> dict[str, str]:
    """KEY=VALUE flags (repeatable) as a dict; one without `=` or a key is a BadInput showing `example`."""
    out = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"Cannot parse {flag} {text!r}.", hint=f"Write {flag} {example}.")
        out[key.strip()] = value.strip()
    return out


def print_json(data: Any) -> None:
    """The command's JSON result on stdout: nothing else is written there (other packages' output is routed)."""
    console.file.write(json.dumps(data, indent=2, default=str) + "\n")
    console.file.flush()


@contextmanager
def routed_console(title: str, verbose: bool) -> Iterator[quiet.Route]:
    """Route other packages' output for one command (quiet.routed) and keep both consoles on the terminal."""
    with quiet.routed(title, verbose) as route:
        console.file, err_console.file = route.stdout, route.stderr
        try:
            yield route
        finally:
            console.file = err_console.file = None  # type: ignore[assignment]  # rich: back to sys.stdout/stderr


def shows_progress(json_out: bool) -> bool:
    """Progress is for a person at a terminal: off under --json and where stderr is not a terminal."""
    return not json_out and err_console.is_terminal


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# rich's live displays would otherwise take over sys.stdout/stderr and print other packages' output above them
KEEP_STREAMS = {"redirect_stdout": False, "redirect_stderr": False}


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A progress display on stderr (silent when disabled, e.g. under --json): done / planned, elapsed and the time
    left, estimated from the whole run so far (a bench's rows take minutes each; rich's default looks back 30 s)."""
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err_console,
                   transient=True, disable=not enabled, speed_estimate_period=24 * 3600, **KEEP_STREAMS)
    with bar:
        yield bar


class _Stages:
    """A progress.Reporter on a rich display: one line per stage (nested ones indented) with its elapsed time,
    and the count (samples seen / total) of the stage that reports one."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.open: list[TaskID] = []

    def begin(self, name: str) -> None:
        self.open.append(self.bar.add_task("  " * len(self.open) + name, total=None, count=""))

    def end(self, name: str) -> None:
        task = self.open.pop()
        self.bar.update(task, total=1, completed=1)
        self.bar.stop_task(task)

    def count(self, done: int, total: int | None) -> None:
        if self.open:
            self.bar.update(self.open[-1], count=f"{done}/{total}" if total is not None else str(done))


@contextmanager
def stages(title: str, enabled: bool = True) -> Iterator[None]:
    """Show the stages of one long step (export, calibrate, quantize, write...) with their elapsed times on stderr,
    left on screen when done; nothing when disabled."""
    if not enabled:
        yield
        return
    bar = Progress(SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"),
                   TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=err_console, **KEEP_STREAMS)
    display = _Stages(bar)
    with bar, reporting.reporting(display), reporting.stage(title):
        yield


@contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with a message and the elapsed time on stderr for one long step."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  transient=True, disable=not enabled, **KEEP_STREAMS) as bar:
        bar.add_task(message, total=None)
        yield
