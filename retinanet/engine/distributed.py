"""Minimal torchrun/DDP helpers."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Initialises the process group when launched by torchrun. Returns (rank, world_size, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":  # untested here (no GPU): one GPU per local rank
            torch.cuda.set_device(local)
        dist.init_process_group(backend_for(device_type))  # NCCL untested here (no GPU): scripts/gpu_check.py
    return rank, world, local


def backend_for(device_type: str) -> str:
    """The process-group backend: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_max(flag: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        flag = flag.clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
