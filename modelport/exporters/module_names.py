"""The torch module path each exporter records for what it writes, read back the same way everywhere.

The dynamo ONNX exporter gives every node its module scopes (`pkg.torch.onnx.name_scopes`, cumulative paths such
as ['', 'features', 'features.1', 'conv2d']); litert-torch names TFLite tensors by module location instead
(`pkg.Class_attr/pkg.Class_attr/...;2`). debug matches tensors across runtimes by these paths, and the TFLite
backend's `exclude` finds the ops of an ONNX node by them.
"""

from __future__ import annotations

import ast
from typing import Any

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def module_path(node: Any) -> str | None:
    """The torch module path an ONNX node came from (None for ops in the model's own forward, or no metadata)."""
    scopes = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    if not scopes:
        return None
    try:
        parsed = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(parsed, list) or len(parsed) < 2:
        return None
    return str(parsed[-2]) or None  # the last scope is the node itself


def location_module(location: str, modules: set[str]) -> str | None:
    """The module path in a litert-torch location (`pkg.Class_attr/pkg.Class_attr/...`): the longest tail of
    its attribute names that is a module path of the model; None (the model's own forward) where none is."""
    attrs = [part.rsplit(".", 1)[-1].partition("_")[2] for part in location.split("/")]
    for start in range(len(attrs)):
        path = ".".join(attrs[start:])
        if path in modules:
            return path
    return None


def tensor_modules(name: str, modules: set[str]) -> list[str | None]:
    """The module of each location in a litert-torch tensor name (fused ops join several with ';')."""
    return [location_module(part, modules) for part in name.split(";") if "/" in part]
