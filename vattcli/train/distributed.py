"""Process group set-up from torchrun or Slurm, DDP wrapping, and a batch norm synchronised on any backend.

``torch.nn.SyncBatchNorm`` runs on GPUs only; ``GlobalBatchNorm1d`` computes the statistics of the global batch
with a differentiable all-reduce, so CPU (gloo) runs and tests have exactly the semantics of the official cross-replica
batch norm [C configs/head.py: SyncBatchNormalization] and of one process holding the whole batch.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from vattcli.errors import ConfigError, VattError

T = TypeVar("T")
GROUP_STORE_KEY = "vattcli/group-store-port"


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
            raise ConfigError(f"train.device={spec}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def _group_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun, a store of this group's own, hosted by rank 0, for setting up the process group.

    torchrun (torch >= 2.5) hands its workers the store of its rendezvous (``TORCHELASTIC_USE_AGENT_STORE``) and
    keeps that store when it restarts the group (``--max-restarts``), so the restarted group finds the dead group's
    gloo addresses (NCCL ids) under the keys it uses and hangs connecting to them [pytorch#135712]. Rank 0 here hosts
    a fresh store on a free port and publishes the port in torchrun's store; a port published by a dead group no
    longer listens, so the other ranks read the key again until the port they read answers. None when not under
    torchrun's agent store: ``init_process_group`` then reads MASTER_ADDR/MASTER_PORT (rank 0 hosts the store)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host = os.environ["MASTER_ADDR"]
    agent = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    if rank == 0:
        store = dist.TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(GROUP_STORE_KEY, str(store.port))
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        port = int(agent.get(GROUP_STORE_KEY))  # waits for the first group's rank 0
        if _listening(host, port):
            return dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
        time.sleep(0.2)
    raise TimeoutError(f"rank {rank}: rank 0 published no process-group store within {timeout}")


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
        timeout = datetime.timedelta(minutes=30)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timeout, store=_group_store(rank, world, timeout))
    return DistInfo(rank, local_rank, world, device)


def from_main(make: Callable[[], T], info: DistInfo) -> T:
    """``make()`` run on the main rank, its result (or its ``VattError``, raised) on every rank: decisions about the
    run folder are taken once, by its writer, so a rank on another node never acts on its own (possibly stale) view
    of a shared file system, and a refusal stops every rank with the same one line."""
    result, failure = None, None
    if info.is_main:
        try:
            result = make()
        except VattError as e:
            failure = e
    if info.distributed:
        box: list[Any] = [(result, failure)]
        dist.broadcast_object_list(box, src=0)
        result, failure = box[0]
    if failure is not None:
        raise failure
    return result  # type: ignore[return-value]


def on_every_rank(run: Callable[[], None], info: DistInfo) -> None:
    """``run()`` on every rank; a ``VattError`` on any rank is raised on all of them (the lowest rank's), so no rank
    goes on to wait in a collective for one that stopped."""
    failure = None
    try:
        run()
    except VattError as e:
        failure = e
    if info.distributed:
        failures: list[Any] = [None] * info.world_size
        dist.all_gather_object(failures, failure)
        failure = next((f for f in failures if f is not None), None)
    if failure is not None:
        raise failure


def gather_objects(obj: T, info: DistInfo) -> list[T]:
    """Every rank's ``obj``, in rank order (picklable objects; ``[obj]`` on one process)."""
    if not info.distributed:
        return [obj]
    objects: list[Any] = [None] * info.world_size
    dist.all_gather_object(objects, obj)
    return objects


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


def max_over_ranks(value: int, info: DistInfo) -> int:
    """The largest of every rank's ``value``: a vote every rank reaches at the same point of its loop."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
