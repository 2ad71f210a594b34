"""Per-layer divergence of an artifact, read in its own runtime and mapped to ONNX nodes and torch modules.

`debug(artifact, model, evaluation, ...)` is `modelport debug` as one call (api.py): it returns the debug.json
record and writes debug.json and debug.html. Below it, `debug_artifact` streams evaluation samples through the
artifact and a reference (the FP32 ONNX export in ONNX Runtime, or a second artifact), compares every tensor
both expose, and ranks the layers by how much error each adds (`rank_layers`, which the accuracy-budget search
reuses).
"""

from modelport.debug.api import debug, debug_to_files
from modelport.debug.compare import rank_layers
from modelport.debug.run import debug_artifact

__all__ = ["debug", "debug_artifact", "debug_to_files", "rank_layers"]
