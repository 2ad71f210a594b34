"""Float16 conversion of an ONNX graph with float32 I/O kept, shared by every backend that needs it.

Uses ONNX Runtime's converter (`onnxruntime.transformers.float16`); ops that lose accuracy or have no
FP16 kernel in common runtimes stay in float32, and the result says which ops those were.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelport.errors import BadInput

# Ops kept in float32: reductions and normalisations whose FP16 accumulation drifts, and ops with
# integer/shape semantics or no FP16 kernels in common runtimes.
FP16_BLOCKED_OPS = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
    "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
    "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsembleClassifier",
    "TreeEnsembleRegressor", "ZipMap", "NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Upsample",
    "ReduceSumSquare", "ReduceLogSumExp", "ReduceL2", "Pow", "Resize",
)


@dataclass
class Fp16Result:
    path: Path
    kept_float: dict[str, int] = field(default_factory=dict)  # op type -> nodes kept in float32
    converted: int = 0


def convert_to_fp16(src: Path, dst: Path, *, exclude: Sequence[str] = (),
                    blocked_ops: Sequence[str] = FP16_BLOCKED_OPS) -> Fp16Result:
    """Write a float16 copy of `src` to `dst`; `exclude` names nodes or op types to keep in float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    op_types = {n.op_type for n in model.graph.node}
    names = {n.name for n in model.graph.node}
    excluded_ops = [e for e in exclude if e in op_types]
    excluded_nodes = [e for e in exclude if e in names]
    unknown = sorted(set(exclude) - set(excluded_ops) - set(excluded_nodes))
    if unknown:
        raise BadInput(f"exclude names {unknown}, which are neither node names nor op types of the model.")
    block = sorted(set(blocked_ops) | set(excluded_ops))
    kept = collections.Counter(n.op_type for n in model.graph.node if n.op_type in block or n.name in excluded_nodes)
    total = len(model.graph.node)
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                         node_block_list=excluded_nodes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    return Fp16Result(dst, dict(kept), total - sum(kept.values()))
