"""`modelport compress`: prune, factorize, distill and QAT-train MODEL into a `.pt2` every other command accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelport.compress.settings import Settings, help_for
from modelport.console import DynamicOpt, InputOpt, JsonOpt, ModelArg, console, err_console, print_json, status
from modelport.errors import BadInput

_DEFAULTS = Settings(distill=True)  # any valid instance: its field values are the defaults


def _opt(name: str, *flags: str) -> Any:
    return typer.Option(*flags, help=help_for(name))


def _figures(row: dict[str, Any], metric: str) -> str:
    value = "-" if row["metric"] is None else f"{row['metric']:.2f}"
    return f"{row['params']:,} params, {row['macs']:,} MACs, {metric} {value}"


def _print(report: dict[str, Any]) -> None:
    metric = report["metric"]["name"]
    table = Table(title=f"Compressed {report['model']}")
    for col in ("step", "settings", "before", "after"):
        table.add_column(col, overflow="fold")
    for step in report["steps"]:
        settings = ", ".join(f"{k} {v}" for k, v in step["settings"].items())
        tune = step["fine_tune"]
        settings += f"; fine-tuned {tune['epochs']} epochs ({tune['objective']})" if tune["epochs"] else ""
        table.add_row(step["technique"], settings, _figures(step["before"], metric), _figures(step["after"], metric))
    table.add_row("[bold]total[/]", "", _figures(report["before"], metric), _figures(report["after"], metric))
    console.print(table)
    before, after = report["before"], report["after"]
    console.print(f"MACs {after['macs'] / before['macs']:.1%} and params {after['params'] / before['params']:.1%} of "
                  f"the original. Wrote {report['output']} and {report['manifest']}.", highlight=False)
    if report["qat"]:
        qat = report["qat"]
        console.print(f"Learned ranges of {qat['tensors']} tensors in {qat['ranges_file']}. Build the int8 model "
                      f"with them:\n  {qat['build']}", highlight=False, soft_wrap=True)


def compress(
    model: ModelArg,
    train: Annotated[str | None, typer.Option(
        "--train", help="Training data with labels (the same forms as --calib: file.npz, a directory, images:DIR, "
                        "file.py:fn, package.module:fn).")] = None,
    evaluation: Annotated[str | None, typer.Option(
        "--eval", help="Evaluation data with labels (default: a quarter of --train, held out).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The .pt2 file to write (default "
                                                "NAME-compressed.pt2); its manifest is written beside it as .json.")]
    = None,
    prune: Annotated[float | None, _opt("prune", "--prune")] = None,
    prune_rounds: Annotated[int, _opt("prune_rounds", "--prune-rounds")] = _DEFAULTS.prune_rounds,
    importance: Annotated[str, _opt("importance", "--importance")] = _DEFAULTS.importance,
    low_rank: Annotated[float | None, _opt("low_rank", "--low-rank")] = None,
    low_rank_target: Annotated[str, _opt("low_rank_target", "--low-rank-target")] = _DEFAULTS.low_rank_target,
    distill: Annotated[bool, _opt("distill", "--distill")] = False,
    temperature: Annotated[float, _opt("temperature", "--temperature")] = _DEFAULTS.temperature,
    alpha: Annotated[float, _opt("alpha", "--alpha")] = _DEFAULTS.alpha,
    distill_features: Annotated[str | None, _opt("distill_features", "--distill-features")] = None,
    qat: Annotated[bool, _opt("qat", "--qat")] = False,
    qat_equalize: Annotated[bool, _opt("qat_equalize", "--qat-equalize/--no-qat-equalize")] = _DEFAULTS.qat_equalize,
    qat_reduce_range: Annotated[str, _opt("qat_reduce_range", "--qat-reduce-range")] = _DEFAULTS.qat_reduce_range,
    qat_epochs: Annotated[int, _opt("qat_epochs", "--qat-epochs")] = _DEFAULTS.qat_epochs,
    qat_lr: Annotated[float, _opt("qat_lr", "--qat-lr")] = _DEFAULTS.qat_lr,
    epochs: Annotated[int, _opt("epochs", "--epochs")] = _DEFAULTS.epochs,
    lr: Annotated[float, _opt("lr", "--lr")] = _DEFAULTS.lr,
    batch_size: Annotated[int, _opt("batch_size", "--batch-size")] = _DEFAULTS.batch_size,
    seed: Annotated[int, _opt("seed", "--seed")] = _DEFAULTS.seed,
    metric: Annotated[str | None, typer.Option(
        help="Evaluation metric file.py:fn(outputs, labels) -> float, higher is better (default: top-1 "
             "accuracy).")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads torch runs with (default: torch's; one is fastest "
                                                     "for small models on a busy machine).")] = None,
    inputs: InputOpt = None,
    dynamic: DynamicOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Prune channels, factorize layers, distill and/or QAT-train MODEL, fine-tuning after each step; write OUT.pt2.

    With --qat, the learned activation ranges are written beside OUT as OUT.pt2.ranges.json, and the int8
    builds of OUT.pt2 read them from there (the command is printed; --option ranges_file= overrides).

    Every finished epoch is checkpointed beside OUT: after an interruption the same command resumes from
    the last finished epoch. The same --seed gives the same model.
    """
    import torch

    from modelport.compress import steps
    from modelport.compress.api import compress as run_compress
    from modelport.compress.output import checkpoint_dir
    from modelport.model import load_model

    if train is None:
        raise BadInput("compress fine-tunes the model after each step and needs training data: --train SRC.",
                       hint="e.g. --train data.npz (arrays per input plus `labels`), or --train package.module:fn.")
    settings = Settings(prune=prune, prune_rounds=prune_rounds, importance=importance, low_rank=low_rank,
                        low_rank_target=low_rank_target, distill=distill, temperature=temperature, alpha=alpha,
                        distill_features=tuple(n.strip() for n in (distill_features or "").split(",") if n.strip()),
                        qat=qat, qat_equalize=qat_equalize, qat_reduce_range=qat_reduce_range, qat_epochs=qat_epochs,
                        qat_lr=qat_lr, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    steps.plan(settings)  # bad ratios and choices fail before any slow work
    if threads is not None:
        torch.set_num_threads(threads)
    with status(f"Loading {model}", not json_out):
        source = load_model(model, inputs or (), dynamic or ())
    out = output or Path(f"{source.name}-compressed.pt2")
    try:
        result = run_compress(source, train=train, evaluation=evaluation, out=out, settings=settings, metric=metric,
                              show_progress=not json_out)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the finished epochs are checkpointed in {checkpoint_dir(out)}; run the same "
                          "command again to resume from the last of them.", highlight=False)
        raise typer.Exit(130) from None
    if json_out:
        print_json(result.report)
    else:
        _print(result.report)


def register(app: typer.Typer) -> None:
    """Add `compress` to the modelport command."""
    app.command(name="compress")(compress)
