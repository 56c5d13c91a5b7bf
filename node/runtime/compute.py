"""The numeric core of a job: chunked forward passes, the training loop, scores -> labels, evaluation metrics.

Determinism rules encoded here (each one changes output bits if changed, so they are part of what a spec hash
names; see README "Determinism"):

- Forward passes outside training run in fixed chunks of `FORWARD_CHUNK` samples in stored order (float32 bits of
  a sample depend on the batch it is computed in).
- Training takes mini-batches of `batch_size` from each row of `order` ([epochs, N]; stored order without one);
  the last batch of an epoch may be short; `steps` stops training after that many optimizer steps in total.
  Losses are means over the batch (cross_entropy over samples; mse over all elements).
- Optimizers use torch's single-tensor (for-loop) implementations (`foreach=False`), Adam / AdamW with betas
  (0.9, 0.999) and eps 1e-8, and the spec's weight_decay (also for AdamW, whose torch default is 0.01).
- A frozen-encoder MiniLM trains only its head, on sentence embeddings computed once in `FORWARD_CHUNK` chunks.
- Argmax / top-k: float64 scores, descending, ties broken by the lowest class index.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marketplace.spec import Training
from node.errors import DivergedError

FORWARD_CHUNK = 64


def to_torch(x: dict[str, np.ndarray], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Float arrays -> `dtype`, int arrays -> int64, on `device`."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, dtype if v.dtype.kind == "f" else torch.int64)
            for k, v in x.items()}


@torch.no_grad()
def forward_chunked(fn: Callable[..., torch.Tensor], x: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """`fn(**x[i:i+FORWARD_CHUNK])` over all samples, concatenated."""
    parts = [fn(**{k: v[s:s + FORWARD_CHUNK] for k, v in x.items()}) for s in range(0, n, FORWARD_CHUNK)]
    return torch.cat(parts)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """int64 [N, k] class ids by descending float64 score, ties -> lowest index (stable sort of -score)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int64)


def evaluate_metrics(out: torch.Tensor, y: np.ndarray, loss: str) -> dict[str, np.ndarray]:
    """float64 loss (and accuracy for classification) from model outputs, published as float32 scalars."""
    o = out.detach().to("cpu", torch.float64)
    if loss == "cross_entropy":
        yt = torch.from_numpy(y)
        value = float(F.cross_entropy(o, yt, reduction="sum").item()) / len(y)
        acc = float((top_k(o.numpy(), 1)[:, 0] == y).sum()) / len(y)
        return {"loss": np.array(value, dtype=np.float32), "accuracy": np.array(acc, dtype=np.float32)}
    value = float(((o - torch.from_numpy(y).to(torch.float64)) ** 2).mean().item())
    return {"loss": np.array(value, dtype=np.float32)}


def make_optimizer(t: Training, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The spec's optimizer over `params` (see module docstring for the fixed settings)."""
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, foreach=False)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay, foreach=False)


def _check_finite(params: list[nn.Parameter], step: int, loss: float) -> None:
    for p in params:
        if not bool(torch.isfinite(p).all()):
            raise DivergedError(f"training diverged at step {step}: weights became non-finite (loss={loss:.6g}); "
                                f"lower the learning rate")


def train(model: nn.Module, t: Training, x: dict[str, torch.Tensor], y: torch.Tensor, n: int,
          order: np.ndarray | None, loss_name: str) -> np.ndarray:
    """Train `model` in place; returns the per-step loss curve (float32 [steps]).

    Raises DivergedError when a loss or weight becomes non-finite (the model is then unusable)."""
    frozen_encoder = getattr(model, "train_encoder", True) is False
    if frozen_encoder:
        feats = forward_chunked(model.embed, x, n)  # type: ignore[arg-type]
        def fn(idx: torch.Tensor) -> torch.Tensor:
            return model.head(feats[idx])  # type: ignore[operator]
    else:
        def fn(idx: torch.Tensor) -> torch.Tensor:
            return model(**{k: v[idx] for k, v in x.items()})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(t, params)
    rows = order if order is not None else np.broadcast_to(np.arange(n, dtype=np.int64), (t.epochs, n))
    cap = t.steps if t.steps is not None else math.inf
    device = y.device
    curve: list[float] = []
    for epoch in range(t.epochs):
        for start in range(0, n, t.batch_size):
            if len(curve) >= cap:
                break
            idx = torch.from_numpy(np.array(rows[epoch, start:start + t.batch_size], dtype=np.int64)).to(device)
            out = fn(idx)
            if loss_name == "cross_entropy":
                loss = F.cross_entropy(out, y[idx])
            else:
                loss = F.mse_loss(out, y[idx])
            value = float(loss.item())
            step = len(curve) + 1
            if not math.isfinite(value):
                raise DivergedError(f"training diverged at step {step}: loss={value}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _check_finite(params, step, value)
            curve.append(value)
    return np.asarray(curve, dtype=np.float32)
