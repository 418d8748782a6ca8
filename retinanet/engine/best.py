"""Best-checkpoint tracking and early stopping on an evaluation metric (``train.best_metric``, ``train.patience``).

Higher is better for every metric the evaluator reports (AP, AP50, ..., AR100). The state travels in
``last.pth`` so that ``--resume`` keeps the best-so-far and the patience count.
"""
from __future__ import annotations

import math
from typing import Any, Optional


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

    def update(self, iteration: int, metrics: dict[str, Any]) -> bool:
        if self.metric not in metrics:
            raise KeyError(f"train.best_metric: {self.metric!r} is not among the evaluation metrics "
                           f"{sorted(k for k in metrics if k != 'per_category')}")
        value = metrics[self.metric]
        # NaN (no ground truth for that metric) never counts as an improvement.
        if value is not None and not math.isnan(value) and (self.value is None or value > self.value):
            self.value, self.iteration, self.bad_evals = float(value), int(iteration), 0
            return True
        self.bad_evals += 1
        return False

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
        if state.get("metric") != self.metric:
            return
        self.value, self.iteration, self.bad_evals = state["value"], state["iteration"], int(state["bad_evals"])
