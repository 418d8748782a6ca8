"""The CUDA-only branches, their device-agnostic parts run on a CPU: the device decisions with a fake
CUDA device, fp16 loss scaling (GradScaler enabled on a CPU), pin_memory's decision, the NCCL choice,
the criterion's all-reduced normaliser, and Winograd/NHWC switched off on CUDA."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import retinanet.criterion as criterion_module
import retinanet.fast as fast_module
import retinanet.fast.fusion as fusion
from retinanet.build import build_criterion, build_model
from retinanet.config_loader import load_config
from retinanet.data.loader import build_dataset, build_train_loader
from retinanet.detector import Detector
from retinanet.engine.amp import grad_scaler, uses_channels_last, uses_winograd
from retinanet.engine.distributed import backend_for, init_distributed
from retinanet.engine.trainer import Trainer

from conftest import tiny_overrides

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_device_decisions_for_cuda_and_cpu():
    assert uses_channels_last(CPU, "") and uses_channels_last(CPU, "bf16")
    assert not uses_channels_last(CUDA, "")  # cuDNN fp32 NHWC is not faster
    assert uses_channels_last(CUDA, "fp16") and uses_channels_last(torch.device("cuda", 1), "bf16")
    assert uses_winograd(CPU) and not uses_winograd(CUDA) and not uses_winograd(torch.device("cuda", 3))
    assert backend_for("cuda") == "nccl" and backend_for("cpu") == "gloo"


def test_one_process_starts_no_process_group_whatever_the_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cuda") == (0, 1, 0) and not torch.distributed.is_initialized()


def test_grad_scaler_only_for_fp16():
    assert grad_scaler(CPU, torch.float16).is_enabled()
    assert not grad_scaler(CPU, torch.bfloat16).is_enabled() and not grad_scaler(CPU, None).is_enabled()
    assert not grad_scaler(CUDA, None).is_enabled() and not grad_scaler(CUDA, torch.bfloat16).is_enabled()


def _trainer(data_root, tmp_path, name: str, **extra) -> Trainer:
    torch.manual_seed(0)
    overrides = tiny_overrides(data_root, tmp_path / name, **{"data.val.annotations": "", **extra})
    return Trainer(load_config(None, overrides))


@pytest.mark.parametrize("clip", [0.0, 1.0])  # 1.0: the unscale_ before clipping
def test_trainer_step_with_fp16_loss_scaling_equals_the_unscaled_step(data_root, tmp_path, clip):
    """The trainer's scaled backward, unscale, clip, step and update, with GradScaler enabled on a CPU
    (as train.amp=fp16 enables it on CUDA): the weights move exactly as without scaling."""
    plain = _trainer(data_root, tmp_path, "plain", **{"solver.clip_grad_norm": clip})
    scaled = _trainer(data_root, tmp_path, "scaled", **{"solver.clip_grad_norm": clip})
    assert not plain.scaler.is_enabled()  # fp32 training: a pass-through scaler
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=True)  # exact power of two
    batch = next(iter(build_train_loader(plain.cfg, plain.dataset)))
    before = copy.deepcopy(plain.model.state_dict())
    plain.step(batch, 0, 2.0)
    scaled.step(batch, 0, 2.0)
    a, b = plain.model.state_dict(), scaled.model.state_dict()
    moved = max((a[k].float() - before[k].float()).abs().max().item() for k in a)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert moved > 1e-6 and worst < 1e-6, (moved, worst)
    assert scaled.scaler.get_scale() == 2.0 ** 10  # no overflow: the scale holds (growth after 2000 steps)


def test_trainer_step_skips_the_update_when_scaled_gradients_overflow(data_root, tmp_path):
    trainer = _trainer(data_root, tmp_path, "overflow")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=True)
    # What an fp16 overflow leaves behind: one inf gradient (the loss itself is finite).
    next(p for p in trainer.model.parameters() if p.requires_grad).register_hook(lambda g: g * float("inf"))
    batch = next(iter(build_train_loader(trainer.cfg, trainer.dataset)))
    before = copy.deepcopy(trainer.model.state_dict())
    values = trainer.step(batch, 0, 2.0)
    assert torch.isfinite(torch.tensor(values["loss"]))  # the loss itself was fine
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # optimizer.step skipped (internal unscale)
    assert trainer.scaler.get_scale() == 2.0 ** 9  # backed off by half


@pytest.mark.parametrize("cuda", [False, True])
def test_train_loader_pins_memory_only_with_cuda(data_root, tmp_path, monkeypatch, cuda):
    cfg = load_config(None, tiny_overrides(data_root, tmp_path / "out"))
    dataset = build_dataset(cfg, "train")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert build_train_loader(cfg, dataset).pin_memory is cuda


class _Recorder(nn.Module):
    def __init__(self, calls: list, channels_last: bool, winograd: bool):
        super().__init__()
        self.calls, self.flags = calls, (channels_last, winograd)

    def forward(self, batch):
        self.calls.append((*self.flags, batch.is_contiguous(memory_format=torch.channels_last)))
        return batch


def _recording_fuse(calls: list):
    return lambda model, channels_last=True, winograd=False: _Recorder(calls, channels_last, winograd)


@pytest.mark.parametrize("device, nhwc", [("cpu", True), ("cuda", False), ("cuda:1", False)])
def test_detector_network_switches_winograd_and_nhwc_off_on_cuda(tiny_cfg, monkeypatch, device, nhwc):
    """Detector.network's decision with a fake CUDA device (the model stays on the CPU; fusion is mocked)."""
    cfg = tiny_cfg()
    det = Detector(build_model(cfg), cfg, "cpu")
    calls: list = []
    monkeypatch.setattr(fast_module, "fuse_for_inference", _recording_fuse(calls))
    det.device = torch.device(device)
    det.network(torch.zeros(1, 3, 32, 32))
    assert calls == [(nhwc, nhwc, nhwc)]  # fused NHWC with Winograd, fed NHWC, only on a CPU


def test_winograd_training_conv_falls_back_to_the_direct_conv_off_the_cpu(monkeypatch):
    """prepare_for_training(winograd=True) on a model later moved to a GPU: the direct conv runs there.
    The meta device stands in for CUDA (any non-CPU device takes that branch)."""
    model = fusion.prepare_for_training(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)), channels_last=False,
                                        winograd=True, min_channels=8)
    conv = model[0]
    assert type(conv).__name__ == "_WinogradConv"
    conv.min_pixels = 0
    used: list = []
    real = fusion.winograd_train_conv
    monkeypatch.setattr(fusion, "winograd_train_conv", lambda *a: used.append(1) or real(*a))
    x = torch.randn(1, 8, 12, 12)
    ref = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(model(x), ref, atol=1e-4) and used == [1]  # Winograd on the CPU
    out = model.to("meta")(x.to("meta"))
    assert out.device.type == "meta" and out.shape == ref.shape and used == [1]  # direct conv elsewhere


def test_criterion_normaliser_is_all_reduced_across_processes(monkeypatch):
    """The criterion divides by the mean foreground count over the processes (what NCCL all-reduces
    between GPUs). A second rank holding 9 foreground anchors is simulated; the real 2-process
    all-reduce (gloo) is covered end to end by test_train_dist and test_trainer's DDP test."""
    crit = build_criterion(load_config(None, ["model.num_classes=3"]))
    assert float(crit._normalizer(torch.tensor(3.0))) == 3.0  # no process group: this process's count

    def all_reduce(t, op=None):
        t.add_(9.0)  # SUM with the other rank's count
    monkeypatch.setattr(criterion_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(criterion_module.dist, "all_reduce", all_reduce)
    count = torch.tensor(3.0)
    assert float(crit._normalizer(count)) == 6.0 and float(count) == 3.0  # the caller's tensor is untouched
