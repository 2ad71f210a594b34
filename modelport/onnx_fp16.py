"""Float16 conversion of an ONNX graph with float32 I/O kept, shared by every backend that needs one
(ONNX Runtime's fp16 artifact, TensorRT's strongly typed fp16 network).

Uses ONNX Runtime's converter (`onnxruntime.transformers.float16`). Ops that overflow or lose precision
in float16, ops the converter cannot convert, and what the caller or user names stay in float32; the
result says which ops those were and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelport.errors import BadInput

# Exponentials and long reductions overflow or lose their precision in float16.
ACCURACY_BLOCK = ("Exp", "Log", "Pow", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare",
                  "ReduceL2", "ReduceLogSumExp", "CumSum", "Range")


@dataclass
class Fp16Result:
    path: Path
    kept_float: dict[str, str] = field(default_factory=dict)  # op type -> why it stayed float32
    kept_nodes: list[str] = field(default_factory=list)  # node names the user kept in float32


def convert_to_fp16(src: Path, dst: Path, *, exclude: Sequence[str] = (),
                    blocked: Mapping[str, str] | None = None) -> Fp16Result:
    """Write a float16 copy of `src` to `dst`.

    `exclude` names nodes or op types the user keeps in float32; `blocked` maps further op types to the
    reason the caller keeps them (e.g. no float16 kernel in its runtime).
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    present = {n.op_type for n in model.graph.node}
    names = {n.name for n in model.graph.node}
    unknown = sorted(e for e in exclude if e not in present and e not in names)
    if unknown:
        raise BadInput(f"exclude names {unknown}, which are neither node names nor op types of the model.",
                       hint=f"Its op types are {', '.join(sorted(present))}.")
    kept = {op: "accuracy: exponentials and long reductions overflow or lose precision in float16"
            for op in ACCURACY_BLOCK if op in present}
    kept.update({op: "no float16 conversion in ONNX Runtime's converter" for op in DEFAULT_OP_BLOCK_LIST
                 if op in present})
    kept.update(blocked or {})
    kept.update({op: "kept in float32 by the user" for op in exclude if op in present})
    nodes = [e for e in exclude if e in names and e not in present]
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(kept)),
                                         node_block_list=nodes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    return Fp16Result(dst, {op: kept[op] for op in sorted(kept) if op in present}, nodes)
