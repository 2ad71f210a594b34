"""The shared QDQ pass: one calibration, explicit QuantizeLinear/DequantizeLinear pairs any backend can consume.

ONNX Runtime's quantization tools do the calibrating (MinMax, Entropy, Percentile) and insert the QDQ
pairs. What this package adds is what keeps static INT8 from collapsing on real models, one module each:

- `settings.py`: every knob, declared once (`QdqSettings`; `declare.py` holds the declaration machinery);
- `prepare.py`: shape inference and basic graph optimization before anything is measured;
- `algorithms/`: rewrites of the float model before calibration, one module each, registered in
  `algorithms/__init__.py` (SmoothQuant: outlier channels in front of MatMul/Gemm moved into the weights;
  cross-layer equalization, AdaRound and bias correction: weights that round to 8 bits with less error);
- `ranges.py`: ORT's calibrators fed in bounded chunks; `statistics.py`: per-tensor SQNR on a few samples;
- `rules.py`: what stays in float (mask adds, softmax inputs, normalization, sentinel-sized ranges, inputs
  whose quantization noise is far above their neighbours', the user's exclusions), each with its reason;
- `fallback.py`: a fidelity check on calibration samples that keeps more in float while the result is poor;
- `cache.py`: the ranges cached by (model hash, calibration fingerprint, method and what ran before), so a
  second backend (OpenVINO, TensorRT) does not calibrate again;
- `write.py`: the pass itself, `write_qdq_model`, and its `QdqResult`.
"""

from modelport.quantize.algorithms import ALGORITHMS, Algorithm, AlgorithmRun, algorithm
from modelport.quantize.algorithms.adaround import AdaRoundOptions
from modelport.quantize.algorithms.bias_correction import BiasCorrectionOptions
from modelport.quantize.algorithms.cle import CleOptions
from modelport.quantize.algorithms.smoothquant import SmoothQuantOptions
from modelport.quantize.rules import resolve_exclude
from modelport.quantize.settings import METHODS, QdqSettings
from modelport.quantize.write import QdqResult, write_qdq_model

__all__ = ["ALGORITHMS", "METHODS", "AdaRoundOptions", "Algorithm", "AlgorithmRun", "BiasCorrectionOptions",
           "CleOptions", "QdqResult", "QdqSettings", "SmoothQuantOptions", "algorithm", "resolve_exclude",
           "write_qdq_model"]
