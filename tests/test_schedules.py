import math

import pytest

from retinanet.config import LossConfig, SolverConfig
from retinanet.schedules import gamma_at, lr_factor


def test_lr_warmup_then_steps():
    s = SolverConfig(base_lr=0.01, warmup_iters=100, warmup_factor=0.001, steps=(200, 300), lr_decay=0.1)
    assert lr_factor(s, 0) == pytest.approx(0.001)
    assert lr_factor(s, 50) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(s, 100) == pytest.approx(1.0)
    assert lr_factor(s, 199) == pytest.approx(1.0)
    assert lr_factor(s, 200) == pytest.approx(0.1)
    assert lr_factor(s, 300) == pytest.approx(0.01)


def test_gamma_constant_uses_gamma():
    assert gamma_at(LossConfig(gamma=1.5), 10, 100) == 1.5


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_gamma_schedule_endpoints(kind):
    cfg = LossConfig(gamma_schedule=kind, gamma=4.0, gamma_end=1.0)
    assert gamma_at(cfg, 0, 1000) == pytest.approx(4.0)
    assert gamma_at(cfg, 1000, 1000) == pytest.approx(1.0)
    assert gamma_at(cfg, 5000, 1000) == pytest.approx(1.0)  # clamped past the end
    mid = gamma_at(cfg, 500, 1000)
    assert mid == pytest.approx(2.5)  # both pass the midpoint at the middle
    assert 1.0 < gamma_at(cfg, 250, 1000) < 4.0


def test_gamma_cosine_is_slower_at_start_than_linear():
    lin = LossConfig(gamma_schedule="linear", gamma=4.0, gamma_end=1.0)
    cos = LossConfig(gamma_schedule="cosine", gamma=4.0, gamma_end=1.0)
    assert gamma_at(cos, 100, 1000) > gamma_at(lin, 100, 1000)
    assert gamma_at(cos, 100, 1000) == pytest.approx(1 + 3 * 0.5 * (1 + math.cos(math.pi * 0.1)))


def test_gamma_step_schedule():
    cfg = LossConfig(gamma_schedule="step", gamma=5.0, gamma_steps=(10, 20), gamma_values=(2.0, 1.0))
    assert [gamma_at(cfg, i, 30) for i in (0, 9, 10, 19, 20, 29)] == [5.0, 5.0, 2.0, 2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="gamma_values"):
        gamma_at(LossConfig(gamma_schedule="step", gamma_steps=(10,), gamma_values=(1.0, 2.0)), 0, 10)


def test_unknown_gamma_schedule():
    with pytest.raises(ValueError, match="gamma_schedule"):
        gamma_at(LossConfig(gamma_schedule="exp"), 0, 10)
