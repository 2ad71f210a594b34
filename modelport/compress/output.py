"""What a compression run leaves: the compressed model as a `.pt2` program every command loads as MODEL,
and beside it a manifest (JSON) of what was done, with versions and the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import torch

from modelport.errors import BadInput, StepFailed
from modelport.machine import machine_summary
from modelport.model import SourceModel, export_args


def manifest_path(out: Path) -> Path:
    return out.with_suffix(".json")


def checkpoint_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def check_output(out: Path) -> Path:
    if out.suffix != ".pt2":
        raise BadInput(f"-o {str(out)!r}: the compressed model is written as a torch.export program, so its name "
                       "ends in .pt2.", hint="e.g. -o digits-pruned.pt2")
    return out


def save_program(source: SourceModel, out: Path) -> None:
    """torch.export the compressed module with the source's dynamic axes and save it atomically."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = tuple({axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in s.dynamic_axes.items()}
                   or None for s in source.inputs)
    try:
        program = torch.export.export(source.module.eval(), export_args(source),
                                      dynamic_shapes=shapes if any(shapes) else None)
    except Exception as exc:
        raise StepFailed(f"torch.export failed on the compressed model: {type(exc).__name__}: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.pt2")  # torch.export.save wants a .pt2 name
    try:
        torch.export.save(program, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _version(package: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return None


def write_manifest(report: dict[str, Any], out: Path) -> Path:
    path = manifest_path(out)
    data = {**report, "versions": {p: _version(p) for p in ("modelport", "torch", "torch-pruning")},
            "machine": machine_summary()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path
