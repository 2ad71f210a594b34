"""What `modelport compress` can be asked to do, declared once: the CLI's options, validation and the manifest
all read this dataclass (each field's help is the CLI's help)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from modelport.errors import BadInput

TRISTATE = ("auto", "true", "false")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    prune: float | None = _opt(None, "Share of channels (MLP neurons, attention heads) to remove, in (0, 1).")
    prune_rounds: int = _opt(1, "Prune in this many rounds, each fine-tuned before the next.")
    importance: str = _opt("magnitude", "How channels are ranked for pruning: magnitude or taylor.")
    low_rank: float | None = _opt(None, "Factorize Linear/Conv2d layers by SVD: the share of singular-value energy "
                                        "kept (or of MACs, with --low-rank-target macs), in (0, 1).")
    low_rank_target: str = _opt("energy", "What --low-rank's ratio means: energy or macs.")
    distill: bool = _opt(False, "Fine-tune with the original model as teacher (temperature-scaled KL on the "
                                "outputs plus the task loss).")
    temperature: float = _opt(4.0, "Distillation temperature.")
    alpha: float = _opt(0.7, "Weight of the distillation loss against the task loss, in [0, 1].")
    distill_features: tuple[str, ...] = _opt((), "Layers (module paths) whose outputs the student also matches "
                                                 "(comma-separated).")
    qat: bool = _opt(False, "Quantization-aware training, after the other steps: fine-tune with int8 fake "
                            "quantization (per-channel symmetric weights, 8-bit activations with learned ranges); "
                            "writes the learned ranges beside OUT for the int8 builds.")
    qat_equalize: bool = _opt(True, "Cross-layer equalize consecutive layers before QAT (the same function in float), "
                                    "so that no channel grown large sets the next layer's 8-bit input range alone.")
    qat_reduce_range: str = _opt("auto", "Train 7-bit weights, as ONNX Runtime's int8 build quantizes them with "
                                         "reduce_range: auto (as that build decides on this CPU: x86 without VNNI), "
                                         "true or false.")
    qat_epochs: int = _opt(2, "Fine-tuning epochs of the QAT step.")
    qat_lr: float = _opt(1e-4, "Learning rate (Adam) of the QAT step: the weights start near their optimum.")
    epochs: int = _opt(2, "Fine-tuning epochs after each step (0: no fine-tuning).")
    lr: float = _opt(1e-3, "Fine-tuning learning rate (Adam).")
    batch_size: int = _opt(64, "Fine-tuning batch size.")
    seed: int = _opt(0, "Seed of the shuffles, dropout and splits: the same seed gives the same model.")

    def __post_init__(self) -> None:
        if self.prune is None and self.low_rank is None and not self.distill and not self.qat:
            raise BadInput("Nothing to do: give --prune RATIO, --low-rank RATIO, --distill and/or --qat.")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise BadInput(f"--epochs must be >= 0, --batch-size >= 1 and --lr > 0 (got {self.epochs}, "
                           f"{self.batch_size}, {self.lr}).")
        if self.qat and (self.qat_epochs < 1 or self.qat_lr <= 0):
            raise BadInput(f"--qat trains the ranges and weights it quantizes, so it needs --qat-epochs of at least 1 "
                           f"and --qat-lr > 0 (got {self.qat_epochs}, {self.qat_lr}).")
        if self.qat_reduce_range not in TRISTATE:
            raise BadInput(f"--qat-reduce-range is one of {', '.join(TRISTATE)}, not {self.qat_reduce_range!r}.")
        if self.distill and self.epochs == 0 and not (self.qat and self.prune is None and self.low_rank is None):
            raise BadInput("--distill trains the compressed model, so it needs --epochs of at least 1.")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["distill_features"] = list(self.distill_features)
        return data


def help_for(name: str) -> str:
    """The declared help of one setting, for the CLI."""
    return next(f.metadata["help"] for f in fields(Settings) if f.name == name)
