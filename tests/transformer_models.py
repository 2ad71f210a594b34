"""Small transformers built from `transformers` configs (random weights, no download): 2 layers, hidden 64, 4 heads.

A larger initializer range than the configs' 0.02 makes attention matter to the output (with 0.02 the
probabilities are near uniform), so a wrongly fused attention shows in the outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models import _Encoder  # the suite's wrapper: last_hidden_state of (input_ids, attention_mask)

SEQ, VOCAB, IMAGE = 16, 1000, 32
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
         "initializer_range": 0.2}


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).last_hidden_state


class _MaskedDecoder(_Decoder):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


class _PositionedDecoder(_Decoder):
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state


class _Vision(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).last_hidden_state


def _tokens() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    mask[1, SEQ * 3 // 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=VOCAB, **SMALL), add_pooling_layer=False)
    return _Encoder(model).eval(), _tokens()


def vit() -> tuple[nn.Module, tuple[torch.Tensor]]:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=IMAGE, patch_size=8, **SMALL), add_pooling_layer=False)
    return _Vision(model).eval(), (torch.randn(2, 3, IMAGE, IMAGE),)


def _gpt2_model() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
                        initializer_range=0.2)
    return GPT2Model(config)


def gpt2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = _gpt2_model()
    return _Decoder(model).eval(), {"input_ids": torch.randint(0, VOCAB, (2, SEQ))}


def gpt2_masked() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """GPT-2 called with a padding mask: the causal mask AND-ed with it. The example mask pads nothing: the export
    check shuffles the example's values, and with a padded example that put padding first in a row, where a query
    sees no key, and torch and the exported graph differ there (max abs 1.83 seen)."""
    model = _gpt2_model()
    return _MaskedDecoder(model).eval(), {"input_ids": torch.randint(0, VOCAB, (2, SEQ)),
                                          "attention_mask": torch.ones(2, SEQ, dtype=torch.int64)}


def gpt2_positioned() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """GPT-2 called with position ids: its mask compares them (and splits packed sequences where they restart), so
    the bias is causal only where they are an arange, which no graph can prove of an input."""
    model = _gpt2_model()
    positions = torch.arange(SEQ).expand(2, -1).contiguous()
    return _PositionedDecoder(model).eval(), {"input_ids": torch.randint(0, VOCAB, (2, SEQ)), "position_ids": positions}



class _BiasedBert(nn.Module):
    """BERT called with a 4D additive mask: the padding mask plus a per-key term of the tokens. Not a function of
    attention_mask alone, so the fused attention must keep it as an additive bias. `per_query=False` leaves the
    bias (batch, 1, 1, seq), which the exported graph broadcasts and ORT's fused Attention does not take."""

    def __init__(self, model: nn.Module, per_query: bool) -> None:
        super().__init__()
        self.model, self.per_query = model, per_query

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        padding = torch.where(attention_mask[:, None, None, :].bool(), 0.0, torch.finfo(torch.float32).min)
        bias = padding + (input_ids % 7).float()[:, None, None, :] * 0.1
        if self.per_query:
            bias = bias.expand(-1, 1, input_ids.shape[1], -1)
        return self.model(input_ids=input_ids, attention_mask=bias).last_hidden_state


def biased_bert(per_query: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=VOCAB, **SMALL), add_pooling_layer=False)
    return _BiasedBert(model, per_query).eval(), _tokens()


def biased_bert_per_key() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    return biased_bert(per_query=False)
