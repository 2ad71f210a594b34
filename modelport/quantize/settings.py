"""Everything the shared QDQ pass can be told, declared once: each field's default, help, parser, choices,
`--option` key and precisions. The pass validates with it, the ONNX Runtime backend lists its QDQ options
from it (OpenVINO and TensorRT derive theirs), `modelport backends --options` shows it, and the result
records it in the manifest. The algorithms' options come from their own declarations in `algorithms/`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from modelport.options import Option, parse_bool
from modelport.quantize.algorithms import ALGORITHMS, algorithm_options
from modelport.quantize.declare import Declared, decided, fraction, names, optional, positive, setting
from modelport.quantize.given import RangesFile, read_ranges_file

METHODS = ("minmax", "entropy", "percentile")
INT_TYPES = ("int8", "uint8")
ANALYSIS_SAMPLES = 64
INT8_AND_DYNAMIC = ("int8", "int8-dynamic")  # ONNX Runtime's dynamic quantizer reads these two as well


@dataclass(frozen=True, kw_only=True)
class QdqSettings(Declared):
    """The shared QDQ pass's settings; construct with keywords, change with `replace` (both are checked)."""

    title: ClassVar[str] = "QDQ setting"

    method: str = setting("minmax", "Calibration method: minmax, entropy or percentile.", str.lower, choices=METHODS)
    percentile: float = setting(99.999, "The percentile kept by the percentile method.", float)
    per_channel: bool = setting(True, "Quantize weights per output channel.", parse_bool)
    symmetric_activations: bool = setting(False, "Symmetric activations (zero point 0).", parse_bool, key="symmetric")
    op_types: tuple[str, ...] = setting(
        (), "Op types to quantize, comma-separated (default: those with fast int8 kernels for this kind of graph, "
        "where the backend knows them; else every op ORT's quantizer takes).", names)
    exclude: tuple[str, ...] = setting((), "Node names or op types to keep in float (comma-separated).", names,
                                       precisions=INT8_AND_DYNAMIC)
    auto_exclude: bool = setting(True, "Keep range-wrecking tensors in float: mask adds, softmax inputs, "
                                 "normalization, ranges far wider than their neighbours'; and the non-compute op "
                                 "that makes a graph output.", parse_bool)
    fidelity_target: float | None = setting(0.99, "Cosine to FP32 on calibration samples under which more stays "
                                            "float; 0 disables.", fraction, key="fidelity")
    analysis_samples: int = setting(ANALYSIS_SAMPLES, "Calibration samples that the per-tensor noise analysis, "
                                    "smoothing and the fidelity check run on (the ranges use every sample); fewer "
                                    "builds faster.", positive)
    ranges_file: RangesFile | None = setting(  # noqa: RUF009 (a field declaration; RangesFile is frozen)
        None, "Activation ranges to use instead of calibrated ones: a JSON file {\"ranges\": {tensor: [min, max]}} "
        "keyed by ONNX tensor name, e.g. the OUT.pt2.ranges.json `modelport compress --qat` writes (the other "
        "tensors are calibrated as usual).", read_ranges_file)
    preprocess: bool = setting(True, "Shape inference and basic optimization before quantizing.", parse_bool,
                               precisions=INT8_AND_DYNAMIC)
    activation_type: str | None = decided(None, "int8 or uint8 activations (default: int8 when symmetric, else "
                                          "uint8).", optional(str.lower), choices=INT_TYPES)
    weight_type: str = decided("int8", "int8 or uint8 weights.", str.lower, choices=INT_TYPES)
    reduce_range: bool = decided(False, "7-bit weights, for int8 kernels whose pair sums can saturate.", parse_bool)
    float_outputs: tuple[str, ...] = decided((), "Op types whose outputs stay float.", names)
    weights_only: bool = decided(False, "Quantize Conv/MatMul/Gemm only where one operand is a constant weight.",
                                 parse_bool)
    batch_size: int | None = decided(None, "Calibration batch where the model's batch axis is dynamic (default 8; "
                                     "1 where another axis is dynamic too).", optional(positive))
    extra_options: Mapping[str, Any] | None = decided(None, "Passed on to ORT's quantize_static.", optional(dict))
    algorithms: Mapping[str, Declared] = field(default_factory=algorithm_options)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "algorithms", algorithm_options(self.algorithms))

    @property
    def activations(self) -> str:
        """The activation type the quantizer writes: the one decided, else int8 when symmetric, else uint8."""
        return self.activation_type or ("int8" if self.symmetric_activations else "uint8")

    @classmethod
    def as_options(cls) -> tuple[Option, ...]:
        """The pass's build options and every registered algorithm's, as a backend lists them."""
        return (*super().as_options(), *(o for a in ALGORITHMS.values() for o in a.options.as_options()))

    @classmethod
    def from_options(cls, values: Mapping[str, Any], **decided_values: Any) -> Self:
        algorithms = {name: a.options.from_options(values) for name, a in ALGORITHMS.items()}
        return super().from_options(values, algorithms=algorithms, **decided_values)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "activation_type": self.activations}
