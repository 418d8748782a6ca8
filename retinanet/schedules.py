"""Schedules over training iterations: the learning rate (warmup + steps) and the focal gamma."""
from __future__ import annotations

import bisect
import math
from typing import get_args

from .config import GammaSchedule, LossConfig, SolverConfig, gamma_steps_problem

GAMMA_SCHEDULES = get_args(GammaSchedule)


def lr_factor(solver: SolverConfig, it: int) -> float:
    """Multiplier of base_lr at iteration ``it``: linear warmup from warmup_factor, then x lr_decay per step."""
    factor = solver.lr_decay ** bisect.bisect_right(list(solver.steps), it)
    if it < solver.warmup_iters:
        alpha = it / solver.warmup_iters
        factor *= solver.warmup_factor * (1 - alpha) + alpha
    return factor


def gamma_at(loss: LossConfig, it: int, max_iter: int) -> float:
    """Focal gamma at iteration ``it``: start high (focus on hard examples) and lower it as the
    detector improves. Every schedule starts at ``gamma``: ``constant`` stays there; ``linear`` and
    ``cosine`` go to ``gamma_end`` over ``max_iter``; ``step`` switches to ``gamma_values[i]`` at
    iteration ``gamma_steps[i]``."""
    kind = loss.gamma_schedule
    if kind == "constant":
        return loss.gamma
    if kind == "step":
        if problem := gamma_steps_problem(loss):
            raise ValueError(problem)
        i = bisect.bisect_right(list(loss.gamma_steps), it)
        return loss.gamma if i == 0 else loss.gamma_values[i - 1]
    t = min(max(it / max(1, max_iter), 0.0), 1.0)
    if kind == "linear":
        return loss.gamma + (loss.gamma_end - loss.gamma) * t
    if kind == "cosine":
        return loss.gamma_end + (loss.gamma - loss.gamma_end) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"model.loss.gamma_schedule: unknown {kind!r}; expected one of {', '.join(GAMMA_SCHEDULES)}")
