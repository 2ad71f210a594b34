"""The `modelport` command. Failures print one paragraph and exit 2 (bad input) or 1 (a failed step)."""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from modelport.backends import BACKENDS
from modelport.clihelp import as_prose
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
    human_bytes,
    parse_pairs,
    print_json,
    routed_console,
    shows_progress,
    stages,
    status,
)
from modelport.errors import BadInput, ModelportError, ModelportWarning, os_error
from modelport.options import PRECISIONS
from modelport.quiet import failed, keep_log


class _Commands(TyperGroup):
    """Turns a ModelportError from any command into one paragraph on stderr and its exit code, runs every command
    with other packages' output routed to its log (once its arguments are parsed: help stays visible), and makes
    help read as prose (clihelp.as_prose: paragraphs rewrapped, examples for every command)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        as_prose(self)
        for command in _leaves(self):
            command.invoke = _routing(command.invoke)  # type: ignore[method-assign]

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # usage errors are typer's to print (exit 2)
            raise
        except ModelportError as exc:
            _fail(f"[bold red]error:[/] {escape(exc.message)}", exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", None, 130)
        except OSError as exc:  # a file operation no command mapped: still the path and the cause, not a bug
            error = os_error(exc, doing="accessing")
            _fail(f"[bold red]error:[/] {escape(error.message)}", error.hint, error.exit_code)
        except Exception as exc:
            _fail(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}",
                  "This is a modelport bug; run again with --debug and report the traceback.", 1)


def _fail(message: str, hint: str | None, code: int) -> None:
    if _state["debug"]:
        traceback.print_exc()
    err_console.print(message, highlight=False, markup=True)
    if hint:
        err_console.print(hint, highlight=False, markup=False)
    if (log := _state.pop("log", None)) is not None:
        err_console.print(f"Other packages' output during this command (--verbose shows it here): {log}",
                          style="dim", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def _leaves(group: click.Group) -> list[click.Command]:
    """The commands under `group`, subgroups walked (by their `commands`: typer ships its own click, whose Group
    is not click.Group)."""
    found = []
    for command in group.commands.values():
        found += _leaves(command) if hasattr(command, "commands") else [command]
    return found


def _routing(invoke: Callable[[click.Context], Any]) -> Callable[[click.Context], Any]:
    """`invoke` with other packages' output routed to the command's log (quiet.routed); on failure the log is kept
    and its path left for the error message."""

    def run(ctx: click.Context) -> Any:
        _state.pop("log", None)
        names, at = [], ctx
        while at.parent is not None:
            names.insert(0, at.info_name or "")
            at = at.parent
        with routed_console(" ".join(["modelport", *names]), bool(_state["verbose"])):
            try:
                return invoke(ctx)
            except BaseException as exc:
                if not (isinstance(exc, typer.Exit) and exc.exit_code == 0):
                    _state["log"] = failed()
                raise

    return run


app = typer.Typer(name="modelport", cls=_Commands, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Take a PyTorch model to ONNX Runtime, OpenVINO, TensorRT and TFLite, and measure which "
                       "deployment to ship.")
_state: dict[str, Any] = {"debug": False, "verbose": False}


def _version_callback(value: bool) -> None:
    if value:
        from modelport import __version__

        console.print(f"modelport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Show other packages' warnings and logs on stderr instead of the log file.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"], _state["verbose"] = debug, verbose
    warnings.showwarning = _show_warning


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """modelport's own warnings (weak calibration data, a damaged artifact rebuilt...) as one yellow line;
    others as Python prints them."""
    if issubclass(category, ModelportWarning):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _parity_rows(parity: list[dict]) -> str:
    return ", ".join(f"{p['name']} {p['max_abs']:.2e} abs / {p['max_rel']:.2e} rel" for p in parity) or "not checked"


@app.command()
def export(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")] = Path("model.onnx"),
    inputs: InputOpt = None,
    dynamic: DynamicOpt = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    atol: Annotated[float, typer.Option(help="Largest accepted error, relative to each output's scale.")] = 1e-4,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the numerical check against PyTorch.")] = False,
    allow_frozen_trace: Annotated[bool, typer.Option(
        "--allow-frozen-trace", help="Accept a TorchScript fallback whose trace froze Python control flow.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export MODEL to ONNX and check it against PyTorch in ONNX Runtime."""
    from modelport.exporters.onnx import export_onnx
    from modelport.model import load_model

    with status(f"Loading {model}", not json_out):
        source = load_model(model, inputs or (), dynamic or ())
    with stages(f"Exporting {source.name} to ONNX", shows_progress(json_out)):
        report = export_onnx(source, output, opset=opset, atol=atol, check=not no_check,
                             allow_frozen_trace=allow_frozen_trace)
    data = report.to_json()
    if json_out:
        print_json(data)
        return
    table = Table(title=f"Exported {source.name}", show_header=False)
    table.add_row("file", str(report.path))
    table.add_row("inputs", " ".join(str(s) for s in report.inputs))
    table.add_row("outputs", " ".join(str(s) for s in report.outputs))
    table.add_row("opset", str(report.opset))
    table.add_row("size", human_bytes(report.size_bytes))
    table.add_row("exporter", report.exporter + (f" (fallback: {report.fallback_reason})" if report.fallback_reason
                                                 else ""))
    table.add_row("parity vs torch", _parity_rows(data["parity"]))
    table.add_row("checked on", ", ".join(report.cases) or "-")
    table.add_row("seconds", f"{report.seconds:.2f}")
    console.print(table)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@app.command()
def build(
    model: ModelArg,
    backend: Annotated[str, typer.Option("--backend", "-b", help=f"One of {', '.join(BACKENDS)}.")],
    precision: Annotated[str, typer.Option("--precision", "-p", help=f"One of {', '.join(PRECISIONS)}.")] = "fp32",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Artifact directory.")] = None,
    calib: CalibOpt = None,
    calib_size: CalibSizeOpt = None,
    seed: SeedOpt = 0,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Backend option key=value (repeatable); `modelport backends --options` lists them.")] = None,
    inputs: InputOpt = None,
    dynamic: DynamicOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if an identical artifact exists.")] = False,
    budget: Annotated[str | None, typer.Option(
        "--budget", help="With --precision int8: keep the fewest layers in float that meet EXPR on held-out data "
                         "(cos>=0.995, sqnr>=25, drop<=1.0 in task-metric points; comma-joined), the fastest such "
                         "build kept.", show_default=False)] = None,
    evaluation: Annotated[str | None, typer.Option(
        "--eval", help="Held-out data --budget is judged on (default: a quarter of --calib, kept out of "
                       "calibration).", show_default=False)] = None,
    max_candidates: Annotated[int, typer.Option("--max-candidates", help="Builds --budget judges at most.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Build a runtime-native artifact of MODEL for one backend and precision."""
    from modelport.artifact import BUILD_LOG
    from modelport.backends import get_backend
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.model import load_model

    backend_impl = get_backend(backend)
    options = parse_pairs(option, "--option", "key=value")
    backend_impl.recipe(precision, options)  # bad options fail before any slow work
    backend_impl.require()
    target = _budget_target(budget, evaluation, precision, calib)
    with status(f"Loading {model}", not json_out):
        source = load_model(model, inputs or (), dynamic or ())
    calibration = None
    if calib is not None:
        calibration = open_calibration(calib, source.inputs, size=calib_size, seed=seed)
    out = output or Path(f"{source.name}-{backend}-{precision}")
    if target is not None and calibration is not None:
        from modelport.calibration import open_evaluation
        from modelport.tune.cli import build_to_budget

        held_out = open_evaluation(evaluation, source.inputs, seed=seed) if evaluation is not None else None
        keep_log(out / BUILD_LOG)  # where the closest candidate lands, even when the budget is missed
        build_to_budget(ModelBundle(source), backend, out, target, calibration, held_out, options, max_candidates,
                        json_out, force)
        return
    with stages(f"Building {backend} {precision}", shows_progress(json_out)):
        artifact, reused = build_artifact(ModelBundle(source), backend, precision, out,
                                          options=options, calibration=calibration, force=force)
    keep_log(artifact.path / BUILD_LOG)
    manifest = artifact.manifest
    if json_out:
        print_json({"path": str(artifact.path), "reused": reused, "manifest": manifest})
        return
    table = Table(title=f"{backend} {precision} {'(reused)' if reused else ''}".strip(), show_header=False)
    table.add_row("artifact", str(artifact.path))
    table.add_row("size", human_bytes(artifact.size_bytes))
    table.add_row("build seconds", f"{manifest['build_seconds']:.2f}")
    if manifest.get("calibration"):
        c = manifest["calibration"]
        table.add_row("calibration", f"{c['samples']} samples from {c['source']} ({c['fingerprint']})")
    if (onnx := manifest.get("onnx")) and onnx.get("fallback_reason"):
        table.add_row("onnx exporter", f"{onnx['exporter']} (fallback: {onnx['fallback_reason']})")
    details = manifest["details"]
    for key, value in details.items():
        if key not in ("main_file", "warning", "ranges_file_beside") and value not in (None, "", [], {}, ()):
            table.add_row(key.replace("_", " "), _short(value, 160))
    console.print(table)
    if beside := details.get("ranges_file_beside"):
        if beside["used"]:
            console.print(f"Activation ranges from {beside['path']}, found beside the model (learned by compress "
                          "--qat); --option ranges_file=PATH or ranges_file=none overrides.", highlight=False)
        else:
            err_console.print(f"[yellow]note:[/] {escape(beside['path'])} beside the model was not used: "
                              f"{escape(beside['why'])}.", highlight=False)
    if details.get("warning"):
        err_console.print(f"[yellow]warning:[/] {escape(str(details['warning']))}", highlight=False)
    console.print(f"Everything the build recorded: modelport inspect {artifact.path}", style="dim")


def _budget_target(budget: str | None, evaluation: str | None, precision: str, calib: str | None):
    """The parsed --budget (None without it), refused before any slow work where it cannot apply."""
    if budget is None:
        if evaluation is not None:
            raise BadInput("--eval is the data --budget is judged on; without --budget a build reads only --calib.")
        return None
    from modelport.tune.budget import check_applies, parse_budget

    target = parse_budget(budget)
    check_applies(target, precision, has_labels=True)  # labels are checked once the data is open
    if calib is None:
        raise BadInput("--budget builds INT8 candidates and needs calibration data.", hint="Pass --calib SRC.")
    return target


def _short(value: object, limit: int = 300) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {v}" for k, v in value.items())
    elif isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command()
def backends(
    options: Annotated[bool, typer.Option("--options", help="Also list every build option of every backend.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List the backends, what they build, and whether this machine can run them."""
    from modelport.backends import get_backend

    rows = []
    for name, entry in BACKENDS.items():
        impl = get_backend(name)
        ok, reason = impl.available()
        rows.append({"name": name, "title": entry.title, "consumes": entry.consumes, "precisions": entry.precisions,
                     "devices": entry.devices, "extra": entry.extra, "artifact": entry.artifact,
                     "available": ok, "reason": reason,
                     "options": [{"name": o.name, "precisions": o.precisions, "default": o.default,
                                  "choices": o.choices, "help": o.help} for o in impl.options]})
    if json_out:
        print_json(rows)
        return
    if options:
        for r in rows:
            table = Table(title=f"{r['title']} options (--option KEY=VALUE)")
            for col in ("option", "precisions", "default", "what it does"):
                table.add_column(col)
            for o in r["options"]:
                default = o["default"]
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
                table.add_row(o["name"], ", ".join(o["precisions"]), shown if default not in (None, ()) else "-",
                              o["help"])
            console.print(table)
    table = Table(title="Backends")
    for col in ("backend", "consumes", "precisions", "artifact", "extra", "status"):
        table.add_column(col)
    for r in rows:
        state = "[green]available[/]" if r["available"] else f"[yellow]unavailable[/]: {r['reason']}"
        table.add_row(r["name"], r["consumes"], ", ".join(r["precisions"]), r["artifact"], r["extra"] or "-", state)
    console.print(table)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="An artifact directory or an .onnx file.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Show what an artifact or ONNX file contains: inputs, outputs, recipe, versions, op counts."""
    from modelport.artifact import Artifact, check_intact

    data = _onnx_summary(path) if path.suffix == ".onnx" else check_intact(Artifact.open(path)).manifest
    if json_out:
        print_json(data)
        return
    table = Table(title=str(path), show_header=False)
    for key, value in data.items():
        table.add_row(key, _short(value, 500))
    console.print(table)


def _onnx_summary(path: Path) -> dict:
    import collections

    import onnx

    from modelport.exporters.onnx import onnx_opset, onnx_specs

    if not path.is_file():
        raise BadInput(f"{str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise BadInput(f"{str(path)!r} is empty (0 bytes): not an ONNX model.",
                       hint="Export it again with `modelport export MODEL -o FILE.onnx`.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInput(f"{str(path)!r} is not a readable ONNX file: {exc}") from exc
    ins, outs = onnx_specs(path)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {"file": str(path), "opset": onnx_opset(path), "inputs": [str(s) for s in ins],
            "outputs": [str(s) for s in outs], "nodes": len(model.graph.node), "ops": dict(ops.most_common()),
            "size": path.stat().st_size}


# Subsystem commands live beside their subsystems: `calib` with calibration, `bench` and `report` with the harness.
from modelport.calibration.cli import calib_app  # noqa: E402
from modelport.compress.cli import register as _register_compress  # noqa: E402
from modelport.harness.commands import register as _register_harness  # noqa: E402

app.add_typer(calib_app, name="calib")
_register_harness(app)
_register_compress(app)

from modelport.debug.cli import debug as _debug  # noqa: E402

app.command("debug")(_debug)


def main() -> None:
    """Entry point of the `modelport` console script."""
    app()


if __name__ == "__main__":
    main()
