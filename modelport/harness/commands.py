"""`modelport bench`, `modelport report` and `modelport compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.console import (
    CalibOpt,
    CalibSizeOpt,
    DynamicOpt,
    InputOpt,
    JsonOpt,
    ModelArg,
    SeedOpt,
    console,
    err_console,
    parse_pairs,
    print_json,
)
from modelport.errors import BadInput, StepFailed, os_error
from modelport.harness.compare import REGRESSIONS, SQNR_CEILING, Thresholds
from modelport.harness.report.budget import Budget
from modelport.options import PRECISIONS

MaxDropOpt = Annotated[float, typer.Option(
    "--max-drop", help="Budget with labels: the most a recommended row's task metric may fall below PyTorch FP32's "
                       "(points; for top-1 accuracy, percentage points).")]
MinSqnrOpt = Annotated[float, typer.Option(
    "--min-sqnr", help="Budget without labels: the least SQNR (dB) against PyTorch FP32 on the worst output.")]
MinCosineOpt = Annotated[float, typer.Option(
    "--min-cosine", help="Budget without labels: the least mean cosine similarity to PyTorch FP32.")]
BUDGET = Budget()  # the defaults of the three flags above, declared once on Budget


def _batches(text: str) -> list[int]:
    try:
        sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise BadInput(f"Cannot parse --batch {text!r}.",
                       hint="Write comma-separated sizes, e.g. --batch 1,8.") from None
    if not sizes or min(sizes) < 1:
        raise BadInput(f"--batch {text!r}: sizes must be positive integers.")
    return list(dict.fromkeys(sizes))


def _default_out(model: str) -> Path:
    name = model.rpartition(":")[2] if ":" in model and not model.endswith(".pt2") else Path(model).stem
    return Path(f"bench-{name}")


def bench(
    model: ModelArg,
    backends: Annotated[str, typer.Option("--backends", "-b", help="Comma-separated backends, or all.")] = "all",
    precisions: Annotated[str, typer.Option("--precisions", "-p", help="Comma-separated precisions.")] =
    ",".join(PRECISIONS),
    calib: CalibOpt = None,
    calib_size: CalibSizeOpt = None,
    evaluation: Annotated[str | None, typer.Option(
        "--eval", help="Evaluation data (same forms as --calib; labels enable the task metric). Without it, "
                       "--calib is split into disjoint calibration and evaluation parts.")] = None,
    eval_size: Annotated[int | None, typer.Option("--eval-size", help="Evaluation samples to use (default all, "
                                                  "or a quarter of --calib when it is split).")] = None,
    seed: SeedOpt = 0,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes to time, comma-separated.")] = "1",
    threads: Annotated[int | None, typer.Option(help="Threads every runtime runs with (default: physical cores).")]
    = None,
    iterations: Annotated[int | None, typer.Option(help="Timed runs per measurement (instead of --duration).")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds of timed runs per measurement (default 1).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 10,
    rounds: Annotated[int, typer.Option(help="Above 1: keep every runner loaded and time the rows of each batch "
                                             "size in turns, this many rounds, so load drifting on the machine "
                                             "hits them alike (every runner is in memory at once).")] = 1,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Build option [BACKEND.]KEY=VALUE (repeatable); without BACKEND it goes to every "
                         "backend and precision that takes KEY.")] = None,
    runner: Annotated[list[str] | None, typer.Option(
        "--runner", help="NAME=file.py:fn adds a row for your own runner: fn(threads=N) returns an object with "
                         "run(feeds) -> dict of outputs (repeatable).")] = None,
    metric: Annotated[str | None, typer.Option(
        help="Task metric file.py:fn(outputs, labels) -> float, higher is better (default: top-1 accuracy "
             "where an output is N x C).")] = None,
    inputs: InputOpt = None,
    dynamic: DynamicOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds each build or measurement may take before it is "
                                                "killed and its row failed.")] = 900.0,
    max_drop: MaxDropOpt = BUDGET.max_drop,
    min_sqnr: MinSqnrOpt = BUDGET.min_sqnr,
    min_cosine: MinCosineOpt = BUDGET.min_cosine,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for results and reports "
                                                "(default bench-NAME).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build MODEL for every backend x precision, measure fidelity and latency against PyTorch FP32, report.

    Each build and measurement runs in its own process; rows are appended to DIR/results.jsonl as they
    finish, so an interrupted run keeps what it measured and the same command resumes it. Batch axes
    (axis 0 of every input) are made dynamic unless --dynamic is given.
    """
    from modelport.harness.api import bench as run_bench
    from modelport.harness.report import render_terminal

    if iterations is not None and duration is not None:
        raise BadInput("Give --iterations or --duration, not both.")
    out = output or _default_out(model)
    budget = Budget(max_drop, min_sqnr, min_cosine)
    try:
        report = run_bench(model, out=out, backends=backends, precisions=precisions, batches=_batches(batch),
                           threads=threads, iterations=iterations, duration=duration, warmup=warmup, rounds=rounds,
                           calib=calib, evaluation=evaluation, calib_size=calib_size, eval_size=eval_size, seed=seed,
                           inputs=inputs or (), dynamic=dynamic or (),
                           options=parse_pairs(option, "--option", "KEY=VALUE or BACKEND.KEY=VALUE"),
                           runners=parse_pairs(runner, "--runner", "NAME=file.py:fn"), metric=metric, timeout=timeout,
                           budget=budget, show_progress=not json_out)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the rows measured so far are in {out / 'results.jsonl'}; run the same "
                          "command again to measure the rest.")
        raise typer.Exit(130) from None
    if json_out:
        print_json(report)
    else:
        render_terminal(report, console)
        console.print(f"Reports: {out / 'report.html'}, {out / 'report.md'}, {out / 'report.json'}", highlight=False)
    if not any(r["status"] == "ok" for r in report["rows"]):
        raise StepFailed(f"No row was measured: every row failed or was unavailable. The reasons are in "
                         f"{out / 'report.md'} and {out / 'results.jsonl'}.")


def report(
    directory: Annotated[Path, typer.Argument(help="A bench output directory (holds results.jsonl).",
                                              show_default=False)],
    max_drop: MaxDropOpt = BUDGET.max_drop,
    min_sqnr: MinSqnrOpt = BUDGET.min_sqnr,
    min_cosine: MinCosineOpt = BUDGET.min_cosine,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write report.{json,md,html} "
                                                "(default: DIRECTORY).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Render the table, report.md, report.json and report.html from DIRECTORY/results.jsonl alone."""
    from modelport.harness.report import build_report, render_terminal, write_reports

    data = build_report(directory, Budget(max_drop, min_sqnr, min_cosine))
    files = write_reports(data, output or directory)
    if json_out:
        print_json(data)
        return
    render_terminal(data, console)
    console.print("Reports: " + ", ".join(str(p) for p in files.values()), highlight=False)


_RUN_ARG = "a bench output directory (holds results.jsonl) or a report.json it wrote."


def compare(
    base: Annotated[Path, typer.Argument(help=f"The baseline: {_RUN_ARG}", show_default=False)],
    new: Annotated[Path, typer.Argument(help=f"The run to judge: {_RUN_ARG}", show_default=False)],
    max_slowdown: Annotated[str, typer.Option(
        "--max-slowdown", help="The most a row's p50 may slow down, in percent; a slowdown inside the runs' own "
                               "noise band (their p90 - p50 combined) never counts.")]
    = f"{Thresholds.max_slowdown:.0%}",
    max_fidelity_drop: Annotated[float, typer.Option(
        "--max-fidelity-drop", help="The most a row's task metric may fall, in points (percentage points for "
                                    "top-1 accuracy).")] = Thresholds.max_fidelity_drop,
    max_sqnr_drop: Annotated[float, typer.Option(
        "--max-sqnr-drop", help="Rows without a task metric: the most SQNR may fall, in dB (only judged below "
                                f"{SQNR_CEILING:g} dB, where float rounding ends).")] = Thresholds.max_sqnr_drop,
    markdown: Annotated[Path | None, typer.Option(
        "--markdown", help="Also write the comparison as Markdown (a pull-request comment) to this file.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare NEW against BASE row by row (backend, precision, batch); exit 1 on a regression.

    A regression is a p50 slowdown beyond --max-slowdown and beyond the runs' own spread, a task metric or
    SQNR drop beyond its threshold, or a row that was ok in BASE and failed in NEW.
    """
    from modelport.harness.compare import compare as run_compare
    from modelport.harness.compare import parse_percent
    from modelport.harness.report.comparison import render_compare_markdown, render_compare_terminal

    for flag, value in (("--max-fidelity-drop", max_fidelity_drop), ("--max-sqnr-drop", max_sqnr_drop)):
        if value < 0:
            raise BadInput(f"{flag} {value:g}: give a non-negative number.")
    thresholds = Thresholds(parse_percent(max_slowdown, "--max-slowdown"), max_fidelity_drop, max_sqnr_drop)
    data = run_compare(base, new, thresholds)
    if markdown is not None:
        try:
            markdown.write_text(render_compare_markdown(data), encoding="utf-8")
        except OSError as exc:
            raise os_error(exc, markdown) from exc
    if json_out:
        print_json(data)
    else:
        render_compare_terminal(data, console)
    if data["regressions"]:
        names = ", ".join(f"{r['backend']} {r['precision']} batch {r['batch']}" for r in data["rows"]
                          if r["status"] in REGRESSIONS)
        raise StepFailed(f"{data['regressions']} regression(s) against {base}: {names}.")


def register(app: typer.Typer) -> None:
    """Add `bench`, `report` and `compare` to the modelport command."""
    app.command(name="bench")(bench)
    app.command(name="report")(report)
    app.command(name="compare")(compare)
