"""The suite's models: standard architectures built with `transformers` from configs (random weights, no
download), each a `package.module:factory` that modelport loads like any user's model.

`transformers` is imported here, at the top: the bench imports a factory's module once in the server that
forks its build processes, so the ~5 s import is paid once a model rather than once a build.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)


class _Logits(nn.Module):
    """Return the one tensor that matters (logits or the last hidden state), not a ModelOutput."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(x), self.field)


def _seeded() -> None:
    torch.manual_seed(0)


def _with_batchnorm_statistics(name: str, model: nn.Module) -> nn.Module:
    """Re-estimate BatchNorm running statistics on photo crops, as training would have left them.

    Freshly initialised BatchNorm layers (mean 0, variance 1) let the signal of a random-weight deep CNN
    shrink layer by layer (MobileNetV2's logits come out near 1e-21), which makes FP16 underflow and any
    fidelity figure meaningless. With statistics from real images every layer sees unit-scale inputs, as
    in a trained network. The result is cached, so every process of a run loads the same weights.
    """
    from benchmarks.data import photo_crops
    from modelport.machine import cache_dir

    path = cache_dir() / "benchmarks" / f"{name}-bn-{torch.__version__}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    images = torch.from_numpy(np.concatenate([s["x"] for s in photo_crops(64, seed=1)]))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over every batch below
    model.train()
    with torch.no_grad():
        for batch in images.split(16):
            model(batch)
    # put the momenta back: the model's code hash reads them, and the processes that load the cached statistics
    # must hash (and so reuse the export of) the same model as this one
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model


def resnet50() -> tuple[nn.Module, tuple[torch.Tensor]]:
    _seeded()
    model = ResNetForImageClassification(ResNetConfig(num_labels=1000))  # the config's defaults are ResNet-50
    return _with_batchnorm_statistics("resnet50", _Logits(model, "logits")), (torch.randn(1, 3, 224, 224),)


def mobilenet_v2() -> tuple[nn.Module, tuple[torch.Tensor]]:
    _seeded()
    model = MobileNetV2ForImageClassification(MobileNetV2Config(num_labels=1000))
    return _with_batchnorm_statistics("mobilenet_v2", _Logits(model, "logits")), (torch.randn(1, 3, 224, 224),)


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_base(seq: int = 128) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """BERT-base (12 layers, hidden 768) at sequence 128, with a padded example so masks are exercised."""
    return _bert(BertConfig(), seq)


def minilm_l6(seq: int = 32) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The 6-layer sentence-encoder shape (hidden 384, 12 heads, FFN 1536: all-MiniLM-L6-v2's config), about
    0.34 GMAC at sequence 32: issue 21's "trained 6-layer encoder" in shape, random weights (speed only)."""
    return _bert(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536), seq)


def _bert(config: BertConfig, seq: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    _seeded()
    model = BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(1000, 20000, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    mask[0, seq * 3 // 4:] = 0
    return _Encoder(model).eval(), {"input_ids": ids, "attention_mask": mask}


class _Decoder(_Encoder):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def gpt2_l6(seq: int = 32) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A 6-layer GPT-2 shape (hidden 384, 6 heads, FFN 1536) called with a padding mask: its causal mask AND-ed
    with the padding one. The example pads nothing: the export check shuffles the mask, and where a query then sees
    no key (padding first in a row) torch and the exported graph differ."""
    _seeded()
    model = GPT2Model(GPT2Config(n_layer=6, n_embd=384, n_head=6)).eval()
    ids = torch.randint(1000, 20000, (1, seq))
    return _Decoder(model).eval(), {"input_ids": ids, "attention_mask": torch.ones(1, seq, dtype=torch.int64)}


def vit_b16() -> tuple[nn.Module, tuple[torch.Tensor]]:
    _seeded()
    model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()  # defaults: ViT-B/16 at 224
    return _Logits(model, "logits").eval(), (torch.randn(1, 3, 224, 224),)
