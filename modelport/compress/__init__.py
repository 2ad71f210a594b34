"""Compression: structured pruning, low-rank factorization and distillation (torch in, torch out).

`compress(model, train=..., out="model.pt2", settings=Settings(prune=0.5, distill=True))` is
`modelport compress`; its output is a `.pt2` program every other command takes as MODEL. MACs and
parameters are counted by `macs.size`, the one count reports and benchmarks share.
"""

from modelport.compress.api import CompressResult, compress
from modelport.compress.macs import count_macs, count_params, size
from modelport.compress.settings import Settings

__all__ = ["CompressResult", "Settings", "compress", "count_macs", "count_params", "size"]
