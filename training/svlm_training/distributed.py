"""Process-group setup for ``svlm-train``: one process, or many under ``torchrun``.

``torchrun --nproc_per_node=N [--nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT] ...`` sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them the script is a single process and no
process group is made, unless one is asked for (FSDP shards over a group even of one process:
a run resumed on one rank from a many-rank FSDP checkpoint keeps the same fp32 master weights
and mixed precision). GPUs use NCCL (one GPU per process: the local rank's), the CPU uses gloo.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits.

    Attributes:
        rank: Global rank (0 for a single process).
        world_size: Processes in the job.
        local_rank: Rank on this node (selects the GPU).
        device: This process's device.
        owns_group: This process made the process group (and closes it at the end).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and the export."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto") -> torch.device:
    """This process's device (the local rank's GPU under torchrun); no process group is made.

    Raises:
        ValueError: CUDA requested but absent, or more processes on a node than GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if world_size > 1 or device in ("auto", "cuda"):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} on this "
                "node; lower --nproc_per_node"
            )
        return torch.device("cuda", local_rank)
    return torch.device(device)


def setup_distributed(device: str = "auto", *, group_of_one: bool = False) -> DistributedContext:
    """Join the torchrun job if there is one, and pick this process's device.

    Args:
        device: ``auto`` (the local rank's GPU if CUDA is present, else the CPU), ``cpu``, or
            ``cuda`` / ``cuda:N`` (under torchrun the local rank's GPU is used either way).
        group_of_one: Make a process group for a single process too (FSDP needs one); it lives
            in this process only (a ``HashStore``), so no port or torchrun is needed.

    Raises:
        ValueError: CUDA requested but absent, or more processes on a node than GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    owns_group = False
    if (world_size > 1 or group_of_one) and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        kwargs = {"device_id": torch_device} if torch_device.type == "cuda" else {}
        if world_size == 1 and "MASTER_ADDR" not in os.environ:
            kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(backend=backend, **kwargs)
        owns_group = True
    return DistributedContext(rank, world_size, local_rank, torch_device, owns_group)


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum of a CPU tensor over all processes, on the CPU (``value`` for one process).

    NCCL only reduces GPU tensors, so the value travels through this process's device.
    """
    if not context.distributed:
        return value
    on_device = value.to(context.device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.cpu()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def broadcast_object(value, context: DistributedContext):
    """Rank 0's ``value`` on every process."""
    if not context.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def no_sync(model, context: DistributedContext, sync: bool):
    """DDP's ``no_sync`` for micro-steps whose gradients are only accumulated."""
    if context.distributed and not sync:
        return model.no_sync()
    return nullcontext()


def cleanup(context: DistributedContext) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
