"""`modelport bench`, `modelport report` and `modelport compare`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    shows_progress,
)
from modelport.errors import BadInput, StepFailed, os_error
from modelport.harness.compare import REGRESSIONS, SQNR_CEILING, Thresholds
from modelport.quiet import keep_log

if TYPE_CHECKING:
    from modelport.harness.cluster import ClusterSettings
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


def _say_ranges_beside(model: str, quiet: bool) -> None:
    """Name the QAT ranges file beside a .pt2 MODEL that the int8 builds will read; a stale one is bad input here,
    before any slow work, rather than a failed row per build."""
    from modelport.quantize.given import beside

    path = beside(model)
    if path is not None and not quiet:
        console.print(f"Activation ranges from {path}, found beside the model: the int8 builds that read ranges "
                      "(onnxruntime, openvino source=qdq, tensorrt) use them; --option ranges_file= overrides.",
                      highlight=False)
ClusterOpt = Annotated[str | None, typer.Option(
    "--cluster", envvar="RAY_ADDRESS", show_envvar=True,
    help="Run the builds and measurements on the Ray cluster at this address (HOST:PORT; needs the [cluster] "
         "extra).")]
MeasureOnOpt = Annotated[str | None, typer.Option(
    "--measure-on", help="With --cluster: measure every row on the nodes with each of these device labels (Ray "
                         "custom resources, comma-separated), one measurement per node at a time.")]
SharedDirOpt = Annotated[bool, typer.Option(
    "--shared-dir", help="With --cluster: the output directory is at the same path on every node (a shared "
                         "filesystem), so artifacts are not copied through Ray's object store.")]


def _cluster_settings(address: str | None, measure_on: str | None, shared: bool) -> ClusterSettings | None:
    """The cluster to run on, or None: the local processes (nothing imports Ray then)."""
    from modelport.harness.cluster import ClusterSettings

    labels = tuple(dict.fromkeys(p.strip() for p in (measure_on or "").split(",") if p.strip()))
    if address is None:
        if labels or shared:
            raise BadInput(f"{'--measure-on' if labels else '--shared-dir'} needs --cluster ADDRESS (or RAY_ADDRESS).")
        return None
    if measure_on is not None and not labels:
        raise BadInput(f"--measure-on {measure_on!r} names no device label.", hint="Write --measure-on LABEL[,LABEL].")
    return ClusterSettings(address.strip(), labels, shared)


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
    budget_expr: Annotated[str | None, typer.Option(
        "--budget", help="Accuracy budget, e.g. cos>=0.995,sqnr>=25 or drop<=1.0: each runtime's INT8 row is the "
                         "searched artifact that keeps the fewest layers in float to meet it (judged on the "
                         "evaluation samples), and every row is judged by it instead of --max-drop/--min-*.")] = None,
    max_candidates: Annotated[int, typer.Option(
        "--max-candidates", help="With --budget: the most INT8 builds each runtime's search judges.")] = 10,
    ship: Annotated[Path | None, typer.Option(
        "--ship", help="Copy the recommended artifact (the fastest of any runtime within the budget) to this "
                       "directory with its manifest and a SHIP.md; exit 1, writing nothing, if none is.")] = None,
    debug_misses: Annotated[bool, typer.Option(
        "--debug-misses", help="Debug every artifact that misses the budget (DIR/debug/ARTIFACT/debug.html, "
                               "linked from the reports).")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for results and reports "
                                                "(default bench-NAME).")] = None,
    cluster: ClusterOpt = None,
    measure_on: MeasureOnOpt = None,
    shared_dir: SharedDirOpt = False,
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
    keep_log(Path(out) / "log.txt")  # beside results.jsonl; each measuring process keeps its own under work/
    budget = Budget(max_drop, min_sqnr, min_cosine, expr=budget_expr)
    _say_ranges_beside(model, json_out)
    try:
        report = run_bench(model, out=out, backends=backends, precisions=precisions, batches=_batches(batch),
                           threads=threads, iterations=iterations, duration=duration, warmup=warmup, rounds=rounds,
                           calib=calib, evaluation=evaluation, calib_size=calib_size, eval_size=eval_size, seed=seed,
                           inputs=inputs or (), dynamic=dynamic or (),
                           options=parse_pairs(option, "--option", "KEY=VALUE or BACKEND.KEY=VALUE"),
                           runners=parse_pairs(runner, "--runner", "NAME=file.py:fn"), metric=metric, timeout=timeout,
                           budget=budget, max_candidates=max_candidates, debug_misses=debug_misses,
                           show_progress=shows_progress(json_out),
                           on_cluster=_cluster_settings(cluster, measure_on, shared_dir))
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
    if ship is not None:  # after the report is shown: when nothing meets the budget, the table says how close
        from modelport.tune.ship import ship as ship_artifact

        winner, where = ship_artifact(report, out, ship)
        err_console.print(f"Shipped {winner.label} to {where} (why: {where / 'SHIP.md'})", highlight=False)


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
