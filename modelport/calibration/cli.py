"""`modelport calib inspect`: what calibration data looks like to the model, before any backend sees it."""

from __future__ import annotations

import warnings
from typing import Annotated, Any

import typer
from rich.table import Table

from modelport.console import CalibSizeOpt, DynamicOpt, InputOpt, JsonOpt, SeedOpt, console, print_json, status

calib_app = typer.Typer(name="calib", no_args_is_help=True, add_completion=False,
                        help="Inspect calibration data against a model's inputs.")

SourceArg = Annotated[str, typer.Argument(
    help="file.npz, a directory of .npy/.npz, images:DIR[?resize=...,crop=...], file.py:fn, package.module:fn "
         "or synthetic[:N].", show_default=False)]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="path/to/file.py:factory, package.module:factory, or a .pt2 file.", show_default=False)]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _shapes(shapes: dict[str, int], limit: int = 3) -> str:
    items = sorted(shapes.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{shape} ({n})" if len(items) > 1 else shape for shape, n in items[:limit])
    return text + (f", … {len(items) - limit} more" if len(items) > limit else "")


def _print(report: dict[str, Any]) -> None:
    summary = Table(title=f"Calibration data: {report['source']}", show_header=False)
    summary.add_row("kind", report["kind"] + (" [yellow](synthetic)[/]" if report["synthetic"] else ""))
    summary.add_row("samples", f"{report['used']} used of {report['found']} found (seed {report['seed']})")
    for key, value in report["details"].items():
        if value is not None:
            summary.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    summary.add_row("fingerprint", report["fingerprint"] or "[red]none (the checks failed)[/]")
    console.print(summary)

    inputs = Table(title="Inputs: the model's shape, the shapes and dtypes seen, and value ranges")
    for col in ("input", "model", "seen", "dtype", "min", "max", "mean", "std", "NaN/Inf"):
        folds = col in ("model", "seen", "dtype")
        inputs.add_column(col, justify="left" if folds or col == "input" else "right", overflow="fold",
                          no_wrap=not folds)
    for row in report["inputs"]:
        if row["expected"]:
            _, shape, dtype = row["expected"].rsplit(":", 2)
            dtypes = ", ".join(d if d == dtype else f"{d}→{dtype}" for d in row["dtypes"])
        else:
            shape, dtypes = "[red]not an input[/]", ", ".join(row["dtypes"])
        inputs.add_row(row["name"], shape, _shapes(row["shapes"]), dtypes, _number(row["min"]), _number(row["max"]),
                       _number(row["mean"]), _number(row["std"]), str(row["nonfinite"]))
    console.print(inputs)

    labels = report["labels"]
    if labels:
        counts = ", ".join(f"{k}: {v}" for k, v in list(labels["counts"].items())[:20])
        names = f" — classes {', '.join(labels['classes'][:20])}" if labels["classes"] else ""
        console.print(f"[bold]Labels[/]: {labels['count']} ({labels['distinct']} distinct){names}\n  {counts}")
    else:
        console.print("[bold]Labels[/]: none (the harness's task metric needs labels in the evaluation data)")

    checks = Table(title="Checks against the model's inputs")
    for col in ("check", "result", "detail"):
        checks.add_column(col)
    for c in report["checks"]:
        if not c["ok"]:
            result = f"[red]failed on {c['failed_samples']} of {report['used']}[/]"
        elif c["unchecked_samples"]:
            result = f"[yellow]ok on {report['used'] - c['unchecked_samples']}; the rest failed earlier checks[/]"
        else:
            result = "[green]ok[/]"
        more = f"\n(and {c['failed_samples'] - 1} more samples)" if c["failed_samples"] > 1 else ""
        checks.add_row(c["what"], result, (c["messages"][0] + more) if c["messages"] else "")
    console.print(checks)
    for message in report["warnings"]:
        console.print(f"[yellow]warning:[/] {message}", highlight=False)


@calib_app.command()
def inspect(
    source: SourceArg,
    model: ModelOpt,
    inputs: InputOpt = None,
    dynamic: DynamicOpt = None,
    calib_size: CalibSizeOpt = None,
    seed: SeedOpt = 0,
    precision: Annotated[str, typer.Option("--precision", "-p", help="The precision to judge the data for.")] = "int8",
    json_out: JsonOpt = False,
) -> None:
    """Show the samples found, their shapes, dtypes and value ranges per input, labels, and what the checks say.

    Exits 2 when a check fails, as a build on this data would.
    """
    from modelport.calibration import CalibrationWarning, inspect_calibration, open_calibration
    from modelport.model import load_model

    with status(f"Loading {model}", not json_out):
        loaded = load_model(model, inputs or (), dynamic or ())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # the report lists the same warnings
        with status(f"Opening {source}", not json_out):
            calibration = open_calibration(source, loaded.inputs, size=calib_size, seed=seed)
        with status(f"Reading and checking {len(calibration)} samples", not json_out):
            report = inspect_calibration(calibration, precision)
    if json_out:
        print_json(report)
    else:
        _print(report)
    if not report["ok"]:
        raise typer.Exit(2)
