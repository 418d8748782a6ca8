"""Best-checkpoint tracking and early stopping on an evaluation metric (``train.best_metric``, ``train.patience``).

Higher is better for every metric the evaluator reports (AP, AP50, ..., AR100). The state travels in
``last.pth`` so that ``--resume`` keeps the best-so-far and the patience count.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..build import checkpoint_payload
from ..checkpoint import save_checkpoint
from .distributed import all_reduce_max

log = logging.getLogger("retinanet")


class BestTracker:
    """Remembers the best value of ``metric`` seen so far and counts evaluations without improvement.

    ``update(iteration, metrics)`` returns True when this evaluation is a new best (the caller then
    writes ``model_best.pth``); ``should_stop`` is True once ``patience`` evaluations in a row did not
    improve (patience 0 never stops).
    """

    def __init__(self, metric: str = "AP", patience: int = 0):
        self.metric, self.patience = metric, patience
        self.value: Optional[float] = None
        self.iteration: Optional[int] = None
        self.bad_evals = 0
        self.last_iteration: Optional[int] = None  # of the last step() or update()

    def update(self, iteration: int, metrics: dict[str, Any]) -> bool:
        if self.metric not in metrics:
            raise KeyError(f"train.best_metric: {self.metric!r} is not among the evaluation metrics "
                           f"{sorted(k for k in metrics if k != 'per_category')}")
        value, self.last_iteration = metrics[self.metric], int(iteration)
        # NaN (no ground truth for that metric) never counts as an improvement.
        if value is not None and not math.isnan(value) and (self.value is None or value > self.value):
            self.value, self.iteration, self.bad_evals = float(value), int(iteration), 0
            return True
        self.bad_evals += 1
        return False

    def step(self, iteration: int, metrics: dict[str, Any], output: Path, cfg, model: nn.Module,
             main: bool = True) -> bool:
        """On the main process: ``update``, then on improvement writes ``output/model_best.pth`` (weights,
        config, categories, iteration, this state); logs either way. Returns ``should_stop``, the main
        process's decision on every DDP rank (they must leave the training loop together). No metrics
        (no val set): nothing happens."""
        def payload() -> dict:
            return checkpoint_payload(cfg, model.state_dict(), iteration=iteration, best=self.state_dict())
        self.last_iteration = int(iteration)  # on every rank: the trainer's "already tracked?" test must agree
        stop = main and bool(metrics) and self._step(iteration, metrics, Path(output) / "model_best.pth", payload)
        return bool(all_reduce_max(torch.tensor([float(stop)])).item())

    def _step(self, iteration: int, metrics: dict[str, Any], best_path: Path, payload: Callable[[], dict]) -> bool:
        if self.update(iteration, metrics):
            log.info("iteration %d: new best %s %.2f -> %s", iteration, self.metric, self.value, best_path.name)
            save_checkpoint(best_path, payload())
        else:
            log.info("iteration %d: %s %.2f, best %.2f at iteration %s (%d evaluation(s) without improvement)",
                     iteration, self.metric, metrics[self.metric], self.value if self.value is not None
                     else float("nan"), self.iteration, self.bad_evals)
        if self.should_stop:
            log.info("early stop at iteration %d: no %s improvement in %d evaluations (train.patience)",
                     iteration, self.metric, self.patience)
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def summary(self) -> dict[str, Any]:
        """For metrics.json: ``best_metric``, ``best_value``, ``best_iteration`` (None before any evaluation)."""
        return {"best_metric": self.metric, "best_value": self.value, "best_iteration": self.iteration}

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "iteration": self.iteration, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A resumed run may switch metric: the old best is not comparable then, so it starts afresh.
        if not state or state.get("metric") != self.metric:
            return
        self.value, self.iteration, self.bad_evals = state["value"], state["iteration"], int(state["bad_evals"])
