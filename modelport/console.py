"""What every command shares: the rich consoles, JSON output, and the option types for models and data."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from modelport.errors import BadInput

console = Console()
err_console = Console(stderr=True)

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
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A progress display on stderr (silent when disabled, e.g. under --json)."""
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err_console, transient=True, disable=not enabled)
    with bar:
        yield bar


@contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with a message on stderr for one long step."""
    if not enabled:
        yield
        return
    with err_console.status(message):
        yield
