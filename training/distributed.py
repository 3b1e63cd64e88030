"""DistributedDataParallel through torchrun, and the no-op path when run without it.

`torchrun --nproc_per_node N main.py ...` sets RANK / WORLD_SIZE / LOCAL_RANK; then each rank
trains on its share of the users (batching.TrainBatches) with its own negative stream, gradients
are averaged by DDP (gloo on CPU, nccl on CUDA), and only rank 0 logs, evaluates and checkpoints.
Without those variables every function here is a no-op and the model is not wrapped.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel


def _launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> tuple[int, int, int]:
    """-> (rank, world_size, local_rank); starts the process group under torchrun."""
    if not _launched():
        return 0, 1, 0
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return tdist.get_rank(), tdist.get_world_size(), local_rank


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def is_main() -> bool:
    return not active() or tdist.get_rank() == 0


def barrier() -> None:
    if active():
        tdist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not active():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_flag(flag: bool, device: torch.device | None = None) -> bool:
    """Rank 0's decision (e.g. early stop), seen by every rank."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device if device is not None else "cpu")
    tdist.broadcast(t, src=0)
    return bool(t.item())


def cleanup() -> None:
    if active():
        tdist.destroy_process_group()


class NullWriter:
    """Stands in for SummaryWriter on ranks that do not log."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass
