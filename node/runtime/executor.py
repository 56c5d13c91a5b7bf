"""Run one job spec on already-loaded tensors: the function the sandbox calls inside its forked child.

    execute(spec, {"inputs": {...}, "labels": {...}}, weights=..., order=...) -> ExecutionResult

Outputs by kind (all arrays little-endian numpy, ready for `marketplace.tensors.dump_tensors`):

- inference: {"logits": float32 [N, C]}; under the `label` profile {"labels": int64 [N, top_k]} instead.
- evaluate: {"loss": float32 [], "accuracy": float32 []} for int class labels (cross_entropy), {"loss"} alone
  for float targets (mse). Both computed in float64 from the model outputs.
- train / finetune: the trained weights (float32, `node.runtime.models.state_dict_numpy` names; head only for a
  frozen-encoder MiniLM) plus {"loss_curve": float32 [steps]}.

Determinism profiles: `exact-f64` runs model and data in float64 and rounds outputs once to float32; `label`
computes exact-f64 scores and publishes top-k class ids; `pinned-f32` and `none` compute in float32. The pinned
kernel variables (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE, ONEDNN_MAX_CPU_ISA=SSE41) are read when torch
loads, so the sandbox must set them before importing torch; here they are only checked and recorded.
Numeric rules (chunking, batches, optimizer settings, tie-breaking) live in `node.runtime.compute`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; must precede CUDA init

import numpy as np
import torch

from marketplace.errors import SpecError
from marketplace.spec import JobSpec
from node.runtime import compute
from node.runtime import inputs as input_checks
from node.errors import DivergedError
from node.runtime.models import build_model, state_dict_numpy

__all__ = ["PINNED_ENV", "DivergedError", "ExecutionResult", "execute", "kernel_env", "kernels_pinned"]

#: The environment that pins float32 CPU kernels (see TOOLCHAIN.md); set before torch is imported.
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


@dataclass
class ExecutionResult:
    """What a job produced and how: `device` ("cpu" or "cuda:0 <name>"), `threads` torch ran with,
    `compute_s` wall seconds from model build to outputs, `cpu_capability` the ATen kernel set in use,
    `kernel_env` the pinning variables as found, `warnings` anything that weakens the profile's guarantee."""

    outputs: dict[str, np.ndarray]
    device: str
    torch_version: str
    compute_s: float
    threads: int
    profile: str = "exact-f64"
    cpu_capability: str = ""
    kernel_env: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def kernel_env() -> dict[str, str | None]:
    """The pinning variables as set in this process."""
    return {k: os.environ.get(k) for k in PINNED_ENV}


def kernels_pinned() -> bool:
    """Whether this process runs the pinned float32 CPU kernels (variables set and ATen on its default set)."""
    env_ok = all((os.environ.get(k) or "").upper() == v.upper() for k, v in PINNED_ENV.items())
    return env_ok and torch.backends.cpu.get_cpu_capability().upper() == "DEFAULT"


def _pick_device(spec: JobSpec, device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if spec.device.type == "cuda" else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecError(f"job needs cuda, but this node has no usable CUDA device (torch {torch.__version__})")
        dev = torch.device(device)
        return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    if device != "cpu":
        raise SpecError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)")
    return torch.device("cpu")


@contextlib.contextmanager
def _pinned_torch(threads: int, dev: torch.device) -> Iterator[None]:
    """Fix the thread count and (on CUDA) deterministic, TF32-free kernels; restore the previous settings."""
    saved_threads = torch.get_num_threads()
    saved = None
    torch.set_num_threads(threads)
    if dev.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                 torch.are_deterministic_algorithms_enabled())
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        if saved is not None:
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved[:4]
            torch.use_deterministic_algorithms(saved[4])


def _device_name(dev: torch.device) -> str:
    return f"cuda:{dev.index} {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "cpu"


def execute(spec: JobSpec, inputs: Mapping[str, Mapping[str, np.ndarray]], *,
            weights: Mapping[str, np.ndarray] | None = None, order: np.ndarray | None = None,
            device: str = "auto", threads: int | None = None, require_pinned: bool = False) -> ExecutionResult:
    """Run `spec` on `inputs` ({"inputs": {...}, "labels": {...}}), from `weights` (the spec's model.weights
    blob, loaded) and `order` (the training.order blob's `order` tensor, [epochs, N]).

    device: "auto" = cuda when the spec asks for it (else cpu); "cpu" / "cuda[:N]" force one (a verifier may rerun
    a cuda job on cpu). threads: torch threads, default 1 for train / finetune (training bits depend on it) and
    min(cpu count, 8) otherwise. require_pinned: a pinned-f32 job on cpu refuses to run without pinned kernels.

    Raises SpecError for inputs, weights or order that do not fit the spec ("bad-input: ..."), a missing CUDA
    device ("needs cuda"), or unpinned kernels under require_pinned; DivergedError (a SpecError) when training
    goes non-finite."""
    trains = spec.kind in ("train", "finetune")
    if (spec.model.weights is None) != (weights is None):
        raise SpecError("bad-input: weights given but the spec names none" if weights is not None
                        else f"bad-input: the spec names weights {spec.model.weights} but none were given")
    prep = input_checks.check(spec, inputs, order)
    dev = _pick_device(spec, device)
    n_threads = threads if threads is not None else (1 if trains else min(os.cpu_count() or 1, 8))
    if n_threads < 1:
        raise SpecError(f"threads must be >= 1, got {n_threads}")
    profile = spec.determinism
    warnings: list[str] = []
    if profile == "pinned-f32" and dev.type == "cpu" and not kernels_pinned():
        msg = (f"pinned-f32 without pinned kernels (env {kernel_env()}, ATen "
               f"{torch.backends.cpu.get_cpu_capability()}): float32 bits are not portable")
        if require_pinned:
            raise SpecError(msg + "; start the job with " + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items()))
        warnings.append(msg)
    if profile == "pinned-f32" and dev.type == "cuda":
        warnings.append("pinned-f32 on cuda: deterministic kernels on this GPU model only, never equal to CPU")
    dtype = torch.float64 if profile in ("exact-f64", "label") else torch.float32

    t0 = time.perf_counter()
    with _pinned_torch(n_threads, dev):
        model = build_model(spec.model.arch, spec.model.params, weights=weights).to(dev, dtype)
        x = compute.to_torch(prep.x, dtype, dev)
        if trains:
            assert spec.training is not None and prep.y is not None and prep.loss is not None
            y = torch.from_numpy(prep.y).to(dev, torch.int64 if prep.loss == "cross_entropy" else dtype)
            curve = compute.train(model, spec.training, x, y, prep.n, prep.order, prep.loss)
            outputs = state_dict_numpy(model)
            outputs["loss_curve"] = curve
        else:
            out = compute.forward_chunked(model, x, prep.n)
            if spec.kind == "evaluate":
                assert prep.y is not None and prep.loss is not None
                outputs = compute.evaluate_metrics(out, prep.y, prep.loss)
            elif profile == "label":
                outputs = {"labels": compute.top_k(out.to("cpu", torch.float64).numpy(), spec.top_k)}
            else:
                outputs = {"logits": np.ascontiguousarray(out.to("cpu", torch.float32).numpy())}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    return ExecutionResult(outputs=outputs, device=_device_name(dev), torch_version=torch.__version__,
                           compute_s=elapsed, threads=n_threads, profile=profile,
                           cpu_capability=torch.backends.cpu.get_cpu_capability(), kernel_env=kernel_env(),
                           warnings=warnings)
