"""`modelport debug`: which layers of an artifact lose the accuracy, read in its own runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.console import InputOpt, JsonOpt, SeedOpt, console, err_console, print_json, progress, status
from modelport.debug.api import DEFAULT_SAMPLES, default_out


def debug(
    artifact: Annotated[Path, typer.Argument(help="The artifact directory to debug.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="The model the artifact was built from "
                                       "(path/to/file.py:factory, package.module:factory or .pt2).",
                                       show_default=False)],
    evaluation: Annotated[str, typer.Option("--eval", help="Evaluation data (same forms as --calib).",
                                            show_default=False)],
    against: Annotated[Path | None, typer.Option(
        "--against", help="Compare with this artifact instead of PyTorch FP32 (e.g. int8 against fp32, or ORT "
                          "against OpenVINO).")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Evaluation samples streamed through both sides.")]
    = DEFAULT_SAMPLES,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for debug.json and debug.html "
                                                "(default: ARTIFACT-debug).")] = None,
    top: Annotated[int, typer.Option("--top", help="Culprits shown in the table.")] = 10,
    threads: Annotated[int | None, typer.Option(help="Threads each runtime runs with.")] = None,
    inputs: InputOpt = None,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Per-layer divergence of ARTIFACT: every tensor its runtime computes against PyTorch FP32 (or --against),
    mapped to ONNX nodes and torch modules, the layers ranked by the error each adds."""
    from modelport.calibration import open_evaluation
    from modelport.debug.api import debug_to_files
    from modelport.debug.report import print_table
    from modelport.debug.run import load_source

    with status(f"Loading {model}", not json_out):
        source = load_source(model, artifact, inputs or ())
    data = open_evaluation(evaluation, source.inputs, size=samples, seed=seed)
    with progress(not json_out) as bar:
        task = bar.add_task(f"Comparing {artifact.name}'s tensors", total=len(data))
        record, files = debug_to_files(artifact, source, data, output or default_out(artifact), against=against,
                                       threads=threads, on_batch=lambda n: bar.update(task, completed=n))
    if json_out:
        print_json(record)
        return
    print_table(record, console, top)
    err_console.print(f"Wrote {', '.join(map(str, files))}", style="dim")
