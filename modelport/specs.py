"""Named tensor specs and their text forms: what artifacts, runners and calibration share, with numpy only.

A manifest stores its inputs and outputs as TensorSpecs, so loading an artifact reads them here and
never imports torch; `model.py` maps the same dtype names to torch dtypes for the model it loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.errors import BadInput

Dim = int | str

# Every dtype a model input may have, by its numpy-style name (model.py holds the torch dtype of each).
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "long": "int64",
           "int": "int64"}


def dtype_name(dtype: Any) -> str:
    """The canonical numpy-style name of a torch or numpy dtype (a torch dtype is read by its name, so this
    never imports torch)."""
    if type(dtype).__module__ == "torch":
        name = str(dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise BadInput(f"Unsupported tensor dtype {dtype}.")
        return name
    name = str(np.dtype(dtype))
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: shape dims are ints (static) or names (symbolic, e.g. 'batch')."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def static_batch(self) -> int | None:
        """The size of axis 0 where it is fixed; None where it is symbolic (or the tensor is a scalar)."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None

    def concrete(self, sizes: Mapping[str, int] | None = None, default: int = 1) -> tuple[int, ...]:
        """The shape with symbolic dims set from `sizes` (or `default`)."""
        sizes = sizes or {}
        return tuple(d if isinstance(d, int) else int(sizes.get(d, default)) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])

    def __str__(self) -> str:
        return f"{self.name}:{'x'.join(str(d) for d in self.shape)}:{self.dtype}"


def parse_input_spec(text: str) -> TensorSpec:
    """Parse `NAME:SHAPE[:DTYPE]`, e.g. `x:1x3x224x224:float32`."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise BadInput(f"Cannot parse --input {text!r}.", hint="Write NAME:SHAPE[:DTYPE], e.g. x:1x3x224x224:float32.")
    name, shape_text = parts[0], parts[1]
    try:
        shape = tuple(int(d) for d in shape_text.lower().split("x"))
    except ValueError:
        raise BadInput(f"Cannot parse the shape {shape_text!r} in --input {text!r}.",
                       hint="Dims are positive integers joined by 'x'; mark dynamic dims with --dynamic.") from None
    if any(d <= 0 for d in shape):
        raise BadInput(f"Dims must be positive in --input {text!r}.")
    dtype = ALIASES.get(parts[2], parts[2]) if len(parts) == 3 else "float32"
    if dtype not in DTYPES:
        raise BadInput(f"Unknown dtype {parts[2]!r} in --input {text!r}.", hint=f"Use one of {', '.join(DTYPES)}.")
    return TensorSpec(name, shape, dtype)


def parse_dynamic_spec(text: str) -> tuple[str, int, str]:
    """Parse `NAME:AXIS=DIMNAME`, e.g. `x:0=batch`."""
    m = re.fullmatch(r"([^:]+):(\d+)=([A-Za-z_]\w*)", text)
    if not m:
        raise BadInput(f"Cannot parse --dynamic {text!r}.", hint="Write NAME:AXIS=DIMNAME, e.g. x:0=batch.")
    return m.group(1), int(m.group(2)), m.group(3)
