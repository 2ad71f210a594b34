"""ONNX Runtime's own tools as the QDQ pass uses them: its calibration methods and `quantize_static` writing QDQ
pairs from the cached ranges (sessions and quiet tools: `modelport/ort_session.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import StepFailed

if TYPE_CHECKING:
    from modelport.quantize.rules import Why
    from modelport.quantize.settings import QdqSettings


def calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def static_quantizer(model_path: Path, ranges_path: Path, settings: QdqSettings, tmp: Path
                     ) -> Callable[[Mapping[str, Why]], Path]:
    """A function that writes a QDQ copy of the prepared model keeping the given nodes in float, from the
    cached ranges (ORT does not calibrate again)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = calibration_method(settings.method)
    extra = {"ActivationSymmetric": settings.symmetric_activations, "WeightSymmetric": True,
             **(settings.extra_options or {})}
    if settings.float_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(settings.float_outputs)
    counter = count()

    def quantize(kept: Mapping[str, Why]) -> Path:
        out = tmp / f"quantized-{next(counter)}.onnx"
        try:
            quantize_static(str(model_path), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
                            per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                            activation_type=types[settings.activations], weight_type=types[settings.weight_type],
                            nodes_to_exclude=sorted(kept), calibrate_method=method, extra_options=dict(extra),
                            calibration_cache_path=str(ranges_path))
        except Exception as exc:
            raise StepFailed(f"ONNX Runtime's quantizer failed: {type(exc).__name__}: {exc}",
                             hint="Keep the failing nodes in float with the exclude option.") from exc
        return out

    return quantize
