"""The one module that touches ``torch.distributed``: process group, DDP wrapping and collectives.

With a single process (no ``WORLD_SIZE`` in the environment) every function here is the identity, so
one CPU process runs exactly the code path that ``torchrun`` runs on 32 GPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on GPU), or run as one process.

    ``timeout_s`` (``trainer.dist_timeout_s``) bounds how long a collective waits for a rank that stopped
    without dying; the waiting ranks then fail and torchrun ends the job.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cuda", "cpu"):
        # "cuda:0" would put every local rank on the same GPU; the rank's GPU comes from LOCAL_RANK.
        raise ValueError(f"trainer.device must be auto, cuda or cpu, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if torch_device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if torch_device.type == "cuda" else None,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def shutdown(env: DistEnv) -> None:
    if env.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_student(
    module: nn.Module,
    env: DistEnv,
    find_unused_parameters: bool,
    *,
    static_graph: bool = False,
    gradient_as_bucket_view: bool = False,
) -> nn.Module:
    """DDP over the student's trainable parameters only (frozen parameters are not registered by DDP).

    ``find_unused_parameters`` is the task's: only multitask needs it (a SAM micro-batch does not reach
    the CLIP head), since parameters without any loss path are frozen before wrapping.
    ``static_graph`` / ``gradient_as_bucket_view`` (``trainer.ddp``) are DDP's own options.
    """
    if not env.is_distributed:
        return module
    # Buffers are not synced in forward: the student's are constants, identical on every rank (same seed).
    # Newer torch renames the option (and warns on the old name).
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        module,
        device_ids=[env.local_rank] if env.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        static_graph=static_graph,
        gradient_as_bucket_view=gradient_as_bucket_view,
        **no_buffer_sync,
    )


@contextlib.contextmanager
def maybe_no_sync(module: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Accumulate gradients locally on every micro-batch but the step's last one."""
    if skip_sync and isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place and returned (a no-op with one process)."""
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` in rank order (for per-rank RNG and data-stream states)."""
    if not env.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()
