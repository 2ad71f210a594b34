"""The suite's models: standard architectures built with `transformers` from configs (random weights, no
download), each a `package.module:factory` that modelport loads like any user's model."""

from __future__ import annotations

import torch
from torch import nn


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


def resnet50() -> tuple[nn.Module, tuple[torch.Tensor]]:
    from transformers import ResNetConfig, ResNetForImageClassification

    _seeded()
    model = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()  # the config's defaults are ResNet-50
    return _Logits(model, "logits").eval(), (torch.randn(1, 3, 224, 224),)


def mobilenet_v2() -> tuple[nn.Module, tuple[torch.Tensor]]:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    _seeded()
    model = MobileNetV2ForImageClassification(MobileNetV2Config(num_labels=1000)).eval()
    return _Logits(model, "logits").eval(), (torch.randn(1, 3, 224, 224),)


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_base(seq: int = 128) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """BERT-base (12 layers, hidden 768) at sequence 128, with a padded example so masks are exercised."""
    from transformers import BertConfig, BertModel

    _seeded()
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()
    ids = torch.randint(1000, 20000, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    mask[0, seq * 3 // 4:] = 0
    return _Encoder(model).eval(), {"input_ids": ids, "attention_mask": mask}


def vit_b16() -> tuple[nn.Module, tuple[torch.Tensor]]:
    from transformers import ViTConfig, ViTForImageClassification

    _seeded()
    model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()  # defaults: ViT-B/16 at 224
    return _Logits(model, "logits").eval(), (torch.randn(1, 3, 224, 224),)
