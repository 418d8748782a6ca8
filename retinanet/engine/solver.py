"""SGD with per-group weight decay, and the per-iteration LR schedule."""
from __future__ import annotations

import torch
from torch import nn

from ..config import SolverConfig
from ..schedules import lr_factor

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(solver: SolverConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD momentum; norm weights and biases get ``weight_decay_norm_bias`` when it is set."""
    wd_nb = solver.weight_decay if solver.weight_decay_norm_bias is None else solver.weight_decay_norm_bias
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORMS) or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": solver.weight_decay},
              {"params": no_decay, "weight_decay": wd_nb}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=solver.base_lr, momentum=solver.momentum)


def build_lr_scheduler(solver: SolverConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration; linear warmup then multistep decay (Detectron2's WarmupMultiStepLR)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(solver, it))
