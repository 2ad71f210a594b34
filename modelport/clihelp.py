"""CLI help as prose: docstring paragraphs rewrapped to the terminal, and an Examples block for every command.

Docstrings are wrapped at 120 columns in the source; kept as they are, those line breaks would break sentences
in the middle on every other terminal width. `as_prose` rewrites each command's help once, when the CLI is
assembled, so no docstring needs writing for the terminal, and gives each command the examples below. A
command without examples is a bug the tests catch (tests/test_cli_help.py).
"""

from __future__ import annotations

import inspect
from typing import Any

from rich.markup import escape

DIGITS = "modelport.examples:digits_cnn"
CALIB = "--calib modelport.examples:digits_calibration"
EVAL = "--eval modelport.examples:digits_evaluation"
WIDTH = 74  # example lines fit an 80-column terminal inside the help's margins

# command path ("" is `modelport` itself) -> (what it does, the command line), shown under "Examples:"
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "": (("Benchmark the built-in digits CNN on every runtime this machine has",
          f"modelport bench {DIGITS} {CALIB} {EVAL} -o bench-digits"),
         ("Show what one command takes", "modelport build --help")),
    "export": (("Export the built-in CNN with a dynamic batch axis, checked in ONNX Runtime",
                f"modelport export {DIGITS} -d x:0=batch -o digits.onnx"),
               ("A bare nn.Module factory needs its inputs described",
                "modelport export net.py:make -i x:1x3x224x224:float32 -o net.onnx")),
    "build": (("An ONNX Runtime INT8 artifact from the example's calibration data",
               f"modelport build {DIGITS} -b onnxruntime -p int8 {CALIB} -o digits-int8"),
              ("OpenVINO INT8 from the shared QDQ model instead of NNCF",
               f"modelport build {DIGITS} -b openvino -p int8 {CALIB} --option source=qdq"),
              ("INT8 that keeps layers in float until it meets an accuracy budget",
               f"modelport build {DIGITS} -b onnxruntime -p int8 {CALIB} --budget 'drop<=0.5'")),
    "backends": (("Which runtimes this machine can run, and why not", "modelport backends"),
                 ("Every build option of every backend, with defaults", "modelport backends --options")),
    "inspect": (("What an artifact was built from, with which versions", "modelport inspect digits-int8"),
                ("Inputs, outputs and op counts of an ONNX file", "modelport inspect digits.onnx --json")),
    "bench": (("Every available runtime and precision against PyTorch FP32",
               f"modelport bench {DIGITS} {CALIB} {EVAL} -o bench-digits"),
              ("Two runtimes at batch 1 and 8, rows taking turns over 5 rounds",
               f"modelport bench {DIGITS} -b onnxruntime,openvino -p fp32,int8 {CALIB} --batch 1,8 --rounds 5"),
              ("Latency only, on synthetic data", f"modelport bench {DIGITS} --calib synthetic -p fp32,int8")),
    "report": (("Render the reports again from a run's results.jsonl", "modelport report bench-digits"),
               ("With a stricter budget for the recommendation", "modelport report bench-digits --max-drop 0.5")),
    "compare": (("Judge a new run against a baseline; exit 1 on a regression", "modelport compare bench-main bench-pr"),
                ("Against a stored report.json, writing a pull-request comment",
                 "modelport compare baseline/report.json bench-pr --max-slowdown 10% --markdown compare.md")),
    "compress": (("Prune half of the channels, fine-tuning after it",
                  f"modelport compress {DIGITS} --train modelport.examples:digits_calibration --prune 0.5"),
                 ("Quantization-aware training, then an INT8 build from its ranges",
                  f"modelport compress {DIGITS} --train modelport.examples:digits_calibration --qat -o qat.pt2")),
    "debug": (("Which layers of an INT8 artifact lose the accuracy",
               f"modelport debug digits-int8 -m {DIGITS} {EVAL}"),
              ("INT8 against the FP32 artifact of the same runtime",
               f"modelport debug digits-int8 -m {DIGITS} {EVAL} --against digits-fp32")),
    "calib": (("Check calibration data before building with it",
               f"modelport calib inspect modelport.examples:digits_calibration -m {DIGITS}"),),
    "calib inspect": (("Samples, shapes and ranges of the example's calibration data",
                       f"modelport calib inspect modelport.examples:digits_calibration -m {DIGITS}"),
                      ("A folder of images, resized and cropped as the model expects",
                       "modelport calib inspect 'images:data/val?resize=256,crop=224' -m net.py:make")),
}


def rewrap(text: str) -> str:
    """Paragraphs as single lines, so the terminal wraps them; indented lines, lists and \\b blocks are kept."""
    kept = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines = paragraph.split("\n")
        literal = paragraph.startswith("\b") or any(
            line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in lines)
        kept.append(paragraph if literal else " ".join(line.strip() for line in lines))
    return "\n\n".join(kept)


def shell_lines(command: str, width: int = WIDTH) -> list[str]:
    """A command line split before its options into lines of at most `width` (where it can), each but the last
    to be continued with a backslash."""
    chunks: list[str] = []
    for token in command.split(" "):
        if token.startswith("-") or not chunks:
            chunks.append(token)
        else:
            chunks[-1] += " " + token
    lines = [chunks[0]]
    for chunk in chunks[1:]:
        if len(lines[-1]) + len(chunk) + 3 > width:
            lines.append("    " + chunk)
        else:
            lines[-1] += " " + chunk
    return lines


def examples_epilog(path: str) -> str:
    """The Examples block of one command; the leading newline keeps its indentation through typer's dedent."""
    lines = ["", "Examples:"]
    for i, (what, command) in enumerate(EXAMPLES[path]):
        parts = shell_lines(command)
        lines += [""] * (i > 0) + [f"  # {escape(what)}"]
        lines += [f"  {escape(part)}" + (" \\" if j < len(parts) - 1 else "") for j, part in enumerate(parts)]
    return "\n".join(lines)


def as_prose(command: Any, path: str = "") -> None:
    """Rewrap the help of `command` (a click or typer command) and every command under it, and give each its
    examples."""
    if command.help:
        command.help = rewrap(command.help)
    if command.short_help:
        command.short_help = rewrap(command.short_help)
    if path in EXAMPLES:
        command.epilog = examples_epilog(path)
    for name, sub in (getattr(command, "commands", None) or {}).items():
        as_prose(sub, f"{path} {name}".strip())
