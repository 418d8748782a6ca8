"""Schedules over training iterations: the learning rate (warmup + steps) and the focal gamma."""
from __future__ import annotations

import bisect
import math

from .config import LossConfig, SolverConfig

GAMMA_SCHEDULES = ("constant", "linear", "cosine", "step")


def lr_factor(solver: SolverConfig, it: int) -> float:
    """Multiplier of base_lr at iteration ``it``: linear warmup from warmup_factor, then x lr_decay per step."""
    factor = solver.lr_decay ** bisect.bisect_right(list(solver.steps), it)
    if it < solver.warmup_iters:
        alpha = it / solver.warmup_iters
        factor *= solver.warmup_factor * (1 - alpha) + alpha
    return factor


def gamma_at(loss: LossConfig, it: int, max_iter: int) -> float:
    """Focal gamma at iteration ``it``: start high (focus on hard examples) and lower it as the
    detector improves. ``constant`` uses ``loss.gamma``; ``linear``/``cosine`` go from
    ``gamma_start`` to ``gamma_end`` over ``max_iter``; ``step`` uses ``gamma_values`` between
    ``gamma_steps``."""
    kind = loss.gamma_schedule
    if kind == "constant":
        return loss.gamma
    if kind == "step":
        if len(loss.gamma_values) != len(loss.gamma_steps) + 1:
            raise ValueError(f"model.loss.gamma_values needs one more value than gamma_steps "
                             f"({len(loss.gamma_values)} vs {len(loss.gamma_steps)})")
        return loss.gamma_values[bisect.bisect_right(list(loss.gamma_steps), it)]
    t = min(max(it / max(1, max_iter), 0.0), 1.0)
    if kind == "linear":
        return loss.gamma_start + (loss.gamma_end - loss.gamma_start) * t
    if kind == "cosine":
        return loss.gamma_end + (loss.gamma_start - loss.gamma_end) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"model.loss.gamma_schedule: unknown {kind!r}; expected one of {', '.join(GAMMA_SCHEDULES)}")
