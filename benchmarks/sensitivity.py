"""How much a model amplifies small input noise: the ceiling on any 8-bit artifact's fidelity.

Quantizing a tensor to 8 bits adds noise about 40 dB below its signal. A trained network passes such
noise through roughly unchanged; a deep network with random weights (what the suite can build without a
download) amplifies it, so every INT8 artifact of it, from any runtime or quantizer, lands far below
40 dB SQNR. Measuring the FP32 model's own output SQNR under 40 dB Gaussian input noise tells a reader
which fidelity figures are the quantizer's doing and which are the model's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.similarity import array_sqnr_db

if TYPE_CHECKING:
    from modelport.model import SourceModel

INPUT_SQNR_DB = 40.0


def output_sqnr_under_input_noise(source: SourceModel, calib: str, samples: int = 8, db: float = INPUT_SQNR_DB
                                  ) -> float | None:
    """Output SQNR (dB) of the PyTorch FP32 model when its float inputs carry noise `db` below their signal;
    None for models without float inputs (token ids cannot carry small noise)."""
    import torch

    from modelport.calibration import open_calibration

    batch = next(open_calibration(calib, source.inputs).batches(samples))
    feeds = {k: torch.from_numpy(v) for k, v in batch.items()}
    if not any(t.is_floating_point() for t in feeds.values()):
        return None
    generator = torch.Generator().manual_seed(0)
    noisy = {k: t + torch.randn(t.shape, generator=generator) * t.std() * 10 ** (-db / 20)
             if t.is_floating_point() else t for k, t in feeds.items()}
    with torch.no_grad():
        ref, out = source.module(**feeds), source.module(**noisy)
    ref, out = (o if isinstance(o, torch.Tensor) else o[0] for o in (ref, out))
    return round(array_sqnr_db(ref.numpy(), out.numpy()), 1)
