"""Build the registry's architectures (`marketplace.archs`) as torch modules, with portable initial weights.

Every module is deterministic and dropout-free (there is no randomness at run time), and has no batch-dependent
layer (no BatchNorm): a sample's output depends only on that sample and the weights.

Initial weights, when a spec gives none (`init_weights`), are NOT drawn from torch's RNG: torch seeds do not give
the same weights across CPU kernel sets. Each parameter is filled from its own numpy `PCG64` stream,
`np.random.default_rng(seed)` with `seed` = the first 8 bytes (little-endian) of
`sha256("tensoragora-init:<arch>:<parameter name>")`, drawing only `Generator.random` doubles (exact, portable
bit streams; no libm calls) and rounding once to float32:

- Linear / Conv2d weights: uniform(-1/sqrt(fan_in), +1/sqrt(fan_in)) (torch's default bound); biases: 0.
- Embedding weights: uniform(-sqrt(3), +sqrt(3)) (unit variance, like torch's N(0, 1)).
- LayerNorm: weight 1, bias 0.
- minilm-classifier@1: the encoder comes from the packaged all-MiniLM-L6-v2, only the head is initialised so.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marketplace.archs import CnnParams, MiniLmParams, MlpParams, TransformerParams, get_arch, validate_params
from marketplace.errors import SpecError

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "tanh": torch.tanh,
                                                                   "gelu": F.gelu}


class Mlp(nn.Module):
    """Linear layers with an activation between them; input x [N, in_features] -> [N, out_features]."""

    def __init__(self, p: MlpParams) -> None:
        super().__init__()
        widths = [p.in_features, *p.hidden, p.out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.act = _ACTIVATIONS[p.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class Cnn(nn.Module):
    """[conv(k, same padding) -> relu -> maxpool 2] per entry of `channels`, flatten, linear head.
    Input x [N, in_channels, image_size, image_size] -> [N, num_classes]."""

    def __init__(self, p: CnnParams) -> None:
        super().__init__()
        chans = [p.in_channels, *p.channels]
        self.blocks = nn.ModuleList(nn.Conv2d(a, b, p.kernel_size, padding=p.kernel_size // 2)
                                    for a, b in pairwise(chans))
        side = p.image_size >> len(p.channels)
        self.head = nn.Linear(p.channels[-1] * side * side, p.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.head(x.flatten(1))


class _Block(nn.Module):
    """Pre-norm transformer encoder block: explicit attention math (no fused / fast paths, no key bias), ReLU
    feed-forward."""

    def __init__(self, d: int, nhead: int, dim_ff: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        # No key bias: it adds the same number to every score of a query, so softmax ignores it and its exact
        # gradient is 0; Adam would turn the rounding noise in that gradient into +-lr updates that differ
        # between kernel sets.
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, dim_ff), nn.Linear(dim_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        dh = d // self.nhead
        h = self.ln1(x)
        q, k, v = (lin(h).view(b, length, self.nhead, dh).transpose(1, 2) for lin in (self.q, self.k, self.v))
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh), dim=-1)
        x = x + self.proj(torch.matmul(att, v).transpose(1, 2).reshape(b, length, d))
        return x + self.ff2(F.relu(self.ff1(self.ln2(x))))


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, `num_layers` pre-norm blocks, final LayerNorm, mean over ALL positions
    (no padding mask: pad ids are ordinary tokens), linear head. input_ids [N, L<=max_len] -> [N, num_classes]."""

    def __init__(self, p: TransformerParams) -> None:
        super().__init__()
        self.tok = nn.Embedding(p.vocab_size, p.d_model)
        self.pos = nn.Embedding(p.max_len, p.d_model)
        self.blocks = nn.ModuleList(_Block(p.d_model, p.nhead, p.dim_ff) for _ in range(p.num_layers))
        self.norm = nn.LayerNorm(p.d_model)
        self.head = nn.Linear(p.d_model, p.num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids) + self.pos.weight[: input_ids.shape[1]].unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def build_model(arch: str, params: Mapping, *, weights: Mapping[str, np.ndarray] | None = None) -> nn.Module:
    """The float32 module for `arch` with `params`, in eval mode, with `weights` loaded strictly (see
    `load_weights`) or else the portable initialisation described in this module's docstring.

    Raises SpecError for an unknown arch, bad params, or weights that do not fit."""
    get_arch(arch)
    p = validate_params(arch, dict(params))
    model: nn.Module
    if arch == "mlp@1":
        model = Mlp(p)  # type: ignore[arg-type]
    elif arch == "cnn@1":
        model = Cnn(p)  # type: ignore[arg-type]
    elif arch == "transformer@1":
        model = TransformerClassifier(p)  # type: ignore[arg-type]
    elif arch == "minilm-classifier@1":
        from node.runtime.minilm import MiniLmClassifier, load_pretrained_encoder

        assert isinstance(p, MiniLmParams)
        model = MiniLmClassifier(p.num_classes, train_encoder=p.train_encoder)
        load_pretrained_encoder(model)
    else:  # pragma: no cover - registry and builder out of step
        raise SpecError(f"architecture {arch} is registered but this node cannot build it")
    init_weights(model, arch, skip_prefix="encoder." if arch.startswith("minilm") else None)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _seeded_uniform(arch: str, name: str, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(f"tensoragora-init:{arch}:{name}".encode()).digest()[:8], "little")
    u = np.random.default_rng(seed).random(shape)  # float64 in [0, 1)
    return torch.from_numpy(((2.0 * u - 1.0) * bound).astype(np.float32))


@torch.no_grad()
def init_weights(model: nn.Module, arch: str, *, skip_prefix: str | None = None) -> None:
    """Portable deterministic initialisation (module docstring); parameters under `skip_prefix` are left alone."""
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if skip_prefix and prefix.startswith(skip_prefix):
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(_seeded_uniform(arch, prefix + "weight", tuple(module.weight.shape),
                                                1.0 / math.sqrt(fan_in)))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(_seeded_uniform(arch, prefix + "weight", tuple(module.weight.shape), math.sqrt(3)))
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()


def output_keys(model: nn.Module) -> list[str]:
    """Names `state_dict_numpy` publishes: every parameter, except only `head.*` for a frozen-encoder MiniLM."""
    names = [n for n, _ in model.named_parameters()]
    if getattr(model, "train_encoder", True) is False:
        names = [n for n in names if n.startswith("head.")]
    return names


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Trained weights as contiguous float32 numpy arrays (float64 models are rounded once to float32).

    For minilm-classifier@1 with `train_encoder=False` only the head (`head.weight`, `head.bias`) is returned: the
    encoder is the packaged all-MiniLM-L6-v2, unchanged, so shipping its 22M parameters back would only bloat the
    output; `load_weights` accepts such a head-only dict."""
    params = dict(model.named_parameters())
    return {n: np.ascontiguousarray(params[n].detach().to("cpu", torch.float32).numpy()) for n in output_keys(model)}


@torch.no_grad()
def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load `weights` strictly into `model`'s parameters. Every parameter must be given, except that a MiniLM
    classifier also accepts only `head.*` (the encoder then stays pretrained). Values are cast to the parameter
    dtype. Raises SpecError naming missing, unexpected, mis-shaped, non-float or non-finite tensors."""
    params = dict(model.named_parameters())
    unexpected = sorted(set(weights) - set(params))
    if unexpected:
        raise SpecError(f"weights: unexpected tensor(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    required = set(params)
    if hasattr(model, "train_encoder") and not any(k.startswith("encoder.") for k in weights):
        required = {n for n in params if n.startswith("head.")}
    missing = sorted(required - set(weights))
    if missing:
        raise SpecError(f"weights: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, array in weights.items():
        target = params[name]
        array = np.asarray(array)
        if array.dtype.kind != "f":
            raise SpecError(f"weights: tensor {name!r} has dtype {array.dtype}, expected a float type")
        if tuple(array.shape) != tuple(target.shape):
            raise SpecError(f"weights: tensor {name!r} has shape {list(array.shape)}, "
                            f"expected {list(target.shape)}")
        if not np.isfinite(array).all():
            raise SpecError(f"weights: tensor {name!r} contains NaN or infinity")
        target.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype))
