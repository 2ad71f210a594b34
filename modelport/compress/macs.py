"""How big a model is: parameters and multiply-accumulates of one forward pass.

One count for everything that reports MACs (the `compress` JSON, the manifest, the benchmark). It reads
torch's own FLOP counter, which sees every matrix multiply and convolution at the aten level (modules,
`F.linear`, `@`, attention kernels alike), so a factorized or pruned model is counted the same way as
the original.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: torch.nn.Module) -> int:
    """Parameters (not buffers): what pruning and factorization remove. Modules marked `counted = False`
    (QAT's learned ranges, which the written model does not hold) are left out."""
    return sum(p.numel() for m in module.modules() if getattr(m, "counted", True) for p in m.parameters(recurse=False))


def count_macs(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass on `inputs` (FLOPs of matmuls and convolutions / 2)."""
    counter = FlopCounterMode(display=False)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), counter:
            module(*inputs.values())
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def size(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """`params` and `macs` of a module, as every report shows them."""
    return {"params": count_params(module), "macs": count_macs(module, inputs)}
