"""scripts/gpu_check.py on a CPU: its argument handling, table, no-CUDA exit and error rows, and its
check functions run end to end on tiny models (fp32, gloo), to prove their code runs before a GPU does."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torchvision
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402
import gpu_check_runs as runs  # noqa: E402
from gpu_check_runs import Row  # noqa: E402


def test_ratio_and_table_from_fake_timings():
    assert gpu_check.ratio(0.5, 2.0) == 0.25
    assert gpu_check.ratio(None, 2.0) is None and gpu_check.ratio(1.0, 0.0) is None
    assert gpu_check.ratio("yes", "yes") is None and gpu_check.ratio(True, 1.0) is None
    table = gpu_check.format_table([Row("train step b8 fp16, s", 0.3, 0.45, "a | b"), Row("skipped row", note="n/a"),
                                    Row("infer", note="RuntimeError: boom", failed=True)])
    lines = table.splitlines()
    assert lines[0] == "| check | ours | torchvision | ratio | note |" and len(lines) == 5
    assert lines[2] == "| train step b8 fp16, s | 0.3 | 0.45 | 0.6667 | a / b |"  # '|' escaped in notes
    assert lines[3] == "| skipped row | - | - | - | n/a |"
    assert lines[4].endswith("| FAILED: RuntimeError: boom |")
    rows = gpu_check.rows_json([Row("t", 1.0, 4.0)])
    assert rows == [{"check": "t", "ours": 1.0, "torchvision": 4.0, "note": "", "failed": False, "ratio": 0.25}]


def test_arguments_and_check_selection():
    args = gpu_check.parse_args([])
    assert (args.iters, args.warmup, args.batch, args.size, args.skip, args.json) == (10, 3, 8, (800, 1333), [], "")
    args = gpu_check.parse_args(["--size", "512", "--batch", "2", "--skip", "ddp_nccl", "onnx_cuda"])
    assert args.size == (512, 512) and args.batch == 2
    assert gpu_check.selected_checks(args.skip) == ["train_amp", "infer", "cudnn_benchmark", "channels_last"]
    assert gpu_check.selected_checks([]) == list(gpu_check.CHECKS)
    for bad in (["--skip", "nope"], ["--size", "800x"], ["--iters", "0"], ["--size", "0x5"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "build_bench", lambda *a: pytest.fail("must not build models without CUDA"))
    assert gpu_check.main([], cuda_available=lambda: False) == 0
    out = capsys.readouterr().out
    assert "CUDA is not available" in out and "nothing was measured" in out and "| check |" not in out
    assert gpu_check.cuda_missing("cuda:1", lambda: False) and gpu_check.cuda_missing("cuda", lambda: True) is None
    assert gpu_check.cuda_missing("cpu", lambda: False) is None


def test_a_failing_check_is_a_row_the_rest_still_run_and_the_exit_is_1(capsys, monkeypatch, tmp_path):
    def boom(bench):
        raise RuntimeError("CUDA out of memory\nmore detail")
    fakes = {name: (lambda bench, name=name: [Row(name, 1.0, 2.0)]) for name in gpu_check.CHECKS}
    fakes["infer"] = boom
    monkeypatch.setattr(gpu_check, "CHECK_FNS", fakes)
    monkeypatch.setattr(gpu_check, "build_bench", lambda args, device: "bench")
    out_json = tmp_path / "rows.json"
    code = gpu_check.main(["--device", "cpu", "--skip", "onnx_cuda", "--json", str(out_json)])
    assert code == 1
    rows = json.loads(out_json.read_text())
    assert [r["check"] for r in rows] == ["train_amp", "infer", "ddp_nccl", "cudnn_benchmark", "channels_last"]
    assert rows[1]["failed"] and rows[1]["note"] == "RuntimeError: CUDA out of memory"
    assert rows[0]["ratio"] == 0.5 and not rows[0]["failed"]
    assert "FAILED: RuntimeError: CUDA out of memory" in capsys.readouterr().out
    assert gpu_check.main(["--device", "cpu", "--skip", "infer"]) == 0  # all others pass

    def no_setup():
        raise OSError("no GPU memory")
    rows = gpu_check.run_checks(["train_amp", "infer"], no_setup, fakes)
    assert len(rows) == 1 and rows[0].check == "setup" and rows[0].failed


def _tiny_torchvision() -> torchvision.models.detection.RetinaNet:
    """torchvision's RetinaNet class on a ResNet-18 with a 32-channel FPN: its code path, at CPU-test cost."""
    body = torchvision.models.resnet18()
    fpn = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 32,
                          extra_blocks=LastLevelP6P7(32, 32))
    return torchvision.models.detection.RetinaNet(fpn, 6, min_size=64, max_size=96)


@pytest.fixture(scope="module")
def bench():
    torch.manual_seed(0)
    args = gpu_check.parse_args(["--device", "cpu", "--size", "64x96", "--batch", "2", "--iters", "1",
                                 "--warmup", "0", "--config", ""])
    args.config = None  # the built-in defaults, shrunk below
    tiny = ["model.num_classes=5", "model.backbone.name=resnet18", "model.fpn.channels=32", "model.head.num_convs=1"]
    return runs.build_bench(args, torch.device("cpu"), tv=_tiny_torchvision(), overrides=tiny)


def test_bench_is_what_the_trainer_runs_on_a_cpu(bench):
    assert len(bench.images) == 2 and bench.images[0].shape == (3, 64, 96)
    assert bench.amp is None and bench.ours_nhwc and not bench.same_weights
    assert float(bench.ours.head.cls_logits.bias.detach().abs().max()) == 0.0  # full top-k candidates, as torchvision's
    assert all(int(t["labels"].min()) >= 1 and int(t["labels"].max()) < 5 for t in bench.targets)


def test_train_and_inference_checks_run(bench):
    rows = runs.check_train_amp(bench) + runs.check_infer(bench)
    assert [r.check for r in rows] == ["train step b2 fp32, s", "train step b2 fp32, peak GiB", "train losses finite",
                                       "inference b1 fp32, s/image", "inference b2 fp32, s/image"]
    assert not any(r.failed for r in rows)
    assert all(r.ours > 0 and r.torchvision > 0 for r in rows[:1] + rows[3:])
    assert rows[1].ours is None  # no CUDA memory statistics on a CPU
    assert rows[2].ours == rows[2].torchvision == "yes"


def test_ddp_check_over_gloo_and_memory_format_check_restores_the_model(bench):
    rows = runs.check_ddp(bench)
    assert rows[0].check.startswith("DDP gloo 1 process") and not rows[0].failed, rows[0]
    assert not torch.distributed.is_initialized()  # torn down for the next check
    rows = runs.check_channels_last(bench)
    assert [r.check for r in rows] == ["train step b2, channels_last=off, s", "train step b2, channels_last=on, s"]
    conv = bench.ours.head.cls_logits.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # back to the trainer's format


def test_onnx_check_skips_without_the_cuda_provider(bench, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    rows = runs.check_onnx_cuda(bench)
    assert len(rows) == 1 and not rows[0].failed and "no CUDAExecutionProvider" in rows[0].note


def test_finite_losses_are_judged():
    assert runs._finite([{"a": 1.0, "b": 2.0}])
    assert not runs._finite([{"a": 1.0}, {"a": float("nan")}]) and not runs._finite([])


def test_cudnn_benchmark_check_measures_off_and_on_and_restores_the_flag(bench, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    rows = runs.check_cudnn_benchmark(bench)
    assert [r.check for r in rows] == ["train step b2, cudnn.benchmark=off, s", "inference b2, cudnn.benchmark=off, "
                                       "s/image", "train step b2, cudnn.benchmark=on, s",
                                       "inference b2, cudnn.benchmark=on, s/image"]
    assert all(r.ours > 0 and r.torchvision > 0 for r in rows)
    assert torch.backends.cudnn.benchmark is False
