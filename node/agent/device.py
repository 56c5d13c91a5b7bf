"""What the node advertises about its hardware: measured once at start."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from node.errors import AgentError

from .config import NodeConfig


@dataclass(frozen=True)
class DeviceInfo:
    """What the node advertises: measured once at start."""

    name: str
    device_class: str
    memory_mb: int
    torch: str
    gflops: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_device(config: NodeConfig) -> DeviceInfo:
    """torch version, device name and memory, and a quick float32 matmul throughput (~0.2 s)."""
    import torch

    cls = config.device_class(torch.cuda.is_available())
    if cls == "cuda":
        if not torch.cuda.is_available():
            raise AgentError("device: cuda is configured but torch sees no GPU")
        props = torch.cuda.get_device_properties(0)
        name, memory_mb, dev = props.name, int(props.total_memory // 2**20), torch.device("cuda")
    else:
        import platform

        name = platform.processor() or platform.machine() or "cpu"
        try:
            memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
        except (ValueError, OSError):
            memory_mb = 0
        dev = torch.device("cpu")
    n, reps = 512, 8
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    (a @ b).sum().item()  # warm up kernels
    t0 = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    c.sum().item()
    seconds = max(time.perf_counter() - t0, 1e-9)
    return DeviceInfo(name=name[:128], device_class=cls, memory_mb=memory_mb, torch=torch.__version__[:64],
                      gflops=round(2 * n**3 * reps / seconds / 1e9, 2))
