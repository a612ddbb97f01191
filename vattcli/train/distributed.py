"""Process group set-up from torchrun or Slurm, DDP wrapping, and a batch norm synchronised on any backend.

``torch.nn.SyncBatchNorm`` runs on GPUs only; ``GlobalBatchNorm1d`` computes the statistics of the global batch
with a differentiable all-reduce, so CPU (gloo) runs and tests have exactly the semantics of the official cross-replica
batch norm [C configs/head.py: SyncBatchNormalization] and of one process holding the whole batch.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    """``node[03-05,07],gpu1`` -> ``node03`` (the first host of a Slurm node list)."""
    m = re.match(r"([^\[,]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _env_rank() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) from torchrun's variables, else from Slurm ``srun``, else None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env.setdefault("MASTER_ADDR", _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"])
    return None


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            from vattcli.errors import ConfigError

            raise ConfigError(f"train.device={spec}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun or srun (NCCL on CUDA, gloo on CPU); else one process."""
    found = _env_rank()
    if found is None:
        return DistInfo(device=pick_device(device_spec))
    rank, local_rank, world = found
    device = pick_device(device_spec, local_rank)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, local_rank, world, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the (summed) incoming gradient, so backward all-reduces too."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the global batch of every rank (a cross-replica batch norm that also runs on gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        local = torch.cat([xf.sum(0), xf.pow(2).sum(0), xf.new_tensor([x.shape[0]])])
        total = _AllReduceSum.apply(local)
        d = x.shape[1]
        count = total[-1]
        mean = total[:d] / count
        var = (total[d:2 * d] / count - mean.pow(2)).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * count / (count - 1).clamp_min(1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d by ``GlobalBatchNorm1d`` (weights and running statistics kept)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = GlobalBatchNorm1d(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                    device=child.running_mean.device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``model`` when running on several processes (batch norms synchronised); identity otherwise.

    Parameters are replicated: VATT-LBS (415 M parameters) needs about 7 GB per GPU for fp32 weights, gradients and
    Adam state, well within one accelerator, so sharding (FSDP) is not provided.
    """
    if not info.distributed:
        return model
    convert_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
