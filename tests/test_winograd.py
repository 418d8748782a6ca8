"""Winograd F(4x4, 3x3) convolutions against the direct convolution (float64 as the oracle)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retinanet.fast.fusion import fuse_for_inference
from retinanet.fast.winograd import WinogradConv2d, winograd_convs, winograd_eligible, winograd_train_conv


def _oracle(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bias = conv.bias.double() if conv.bias is not None else None
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=1)


@pytest.mark.parametrize("n, c, k, h, w, bias, block", [
    (1, 32, 16, 16, 20, True, 128),   # whole tiles
    (2, 16, 24, 13, 7, True, 128),    # batch, sizes not multiples of 4
    (1, 8, 40, 9, 30, False, 4),      # no bias; several blocks of tile rows, the last one short
    (3, 24, 8, 5, 5, True, 1),        # one tile row per block, batch 3
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_direct_convolution(n, c, k, h, w, bias, block, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(c, k, 3, padding=1, bias=bias)
    if bias:
        nn.init.uniform_(conv.bias, -1, 1)
    x = torch.randn(n, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wino = WinogradConv2d(conv, min_pixels=0, block_tiles=block)
    with torch.no_grad():
        got, ref = wino(x), _oracle(conv, x)
    assert got.shape == ref.shape == (n, k, h, w)
    # The direct fp32 conv is within ~1e-6 of float64 here; Winograd's transforms add ~10x that.
    err = (got.double() - ref).abs().max().item()
    assert err <= 2e-5 * ref.abs().max().item(), err
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_small_maps_run_the_direct_convolution():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    wino = WinogradConv2d(conv, min_pixels=100)
    x = torch.randn(1, 8, 9, 11)  # 99 pixels
    with torch.no_grad():
        assert torch.equal(wino(x), conv(x))


@pytest.mark.parametrize("conv, eligible", [
    (nn.Conv2d(8, 8, 3, padding=1), True),
    (nn.Conv2d(8, 8, 3, padding=1, stride=2), False),
    (nn.Conv2d(8, 8, 1), False),
    (nn.Conv2d(8, 8, 3, padding=2, dilation=2), False),
    (nn.Conv2d(8, 8, 3, padding=1, groups=2), False),
    (nn.Conv2d(8, 8, 3, padding=0), False),
    (nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), False),
])
def test_eligible_convs_only(conv, eligible):
    assert winograd_eligible(conv) is eligible
    model = nn.Sequential(conv)
    assert winograd_convs(model, min_channels=8) == int(eligible)
    assert isinstance(model[0], WinogradConv2d) is eligible
    if not eligible:
        with pytest.raises(ValueError, match="3x3 conv with stride 1"):
            WinogradConv2d(conv)


def test_narrow_convs_stay_direct():
    model = nn.Sequential(nn.Conv2d(64, 256, 3, padding=1), nn.Conv2d(256, 8, 3, padding=1))
    assert winograd_convs(model, min_channels=256) == 1
    assert type(model[0]) is nn.Conv2d and isinstance(model[1], WinogradConv2d)


def test_fused_retinanet_with_winograd_matches_the_model(tiny_cfg):
    from retinanet.build import build_model
    cfg = tiny_cfg("model.fpn.channels=64")
    model = build_model(cfg).eval()
    fused = fuse_for_inference(model, winograd=True)
    # With the test's narrow head the threshold is lowered so that every head and FPN conv switches.
    assert winograd_convs(fused, min_channels=64) > 0
    x = torch.randn(2, 3, 128, 160).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    for a, b in ((ref.cls_logits, got.cls_logits), (ref.box_deltas, got.box_deltas)):
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter, chosen in export.py
def test_traceable_form_matches_and_exports_to_onnx_with_any_size(tmp_path):
    """The export form (strided slices, NCHW) gives the same outputs, and one ONNX file traced at one
    size serves others (the tiling is traced as shape arithmetic, not baked in)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 12, 3, padding=1)
    wino = WinogradConv2d(conv, min_pixels=0).eval()
    path = tmp_path / "wino.onnx"
    with torch.no_grad():
        torch.onnx.export(wino, (torch.randn(1, 16, 8, 12),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 16, 8, 12), (2, 16, 13, 7), (1, 16, 21, 30)]:
        x = torch.randn(shape)
        ref = _oracle(conv, x)
        with torch.no_grad():
            eager = wino.traceable(x)
        (got,) = session.run(None, {"x": x.numpy()})
        tol = 2e-5 * ref.abs().max().item()
        assert (eager.double() - ref).abs().max().item() <= tol
        assert got.shape == tuple(ref.shape) and (torch.from_numpy(got).double() - ref).abs().max().item() <= tol


@pytest.mark.parametrize("n, c, k, h, w, bias, block", [
    (1, 6, 5, 8, 12, True, 128),
    (2, 4, 7, 13, 9, True, 3),     # batch, ragged tiles, several blocks
    (1, 5, 3, 6, 6, False, 1),
])
def test_training_gradients_equal_the_direct_convolutions(n, c, k, h, w, bias, block):
    """In float64 Winograd is exact up to rounding, so values and all three gradients must agree to ~1e-12."""
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, requires_grad=True) if bias else None
    grad = torch.randn(n, k, h, w, dtype=torch.float64)
    got = winograd_train_conv(x.detach(), weight, b, block_tiles=block)  # no input gradient wanted
    (only_weight,) = torch.autograd.grad(got, [weight], grad)
    got = winograd_train_conv(x, weight, b, block_tiles=block)
    got_grads = torch.autograd.grad(got, [x, weight] + ([b] if bias else []), grad)
    ref = F.conv2d(x, weight, b, padding=1)
    ref_grads = torch.autograd.grad(ref, [x, weight] + ([b] if bias else []), grad)
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)
    for g, r in zip(got_grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-10, rtol=0)
    assert torch.allclose(only_weight, ref_grads[1], atol=1e-10, rtol=0)


def test_prepared_model_trains_through_winograd_with_the_same_gradients(monkeypatch):
    """prepare_for_training(winograd=True): same state-dict keys, loss and gradients as the plain model
    (to fp32 Winograd rounding), and fuse_for_inference turns it back into plain convs."""
    import retinanet.fast.fusion as fusion
    from retinanet.fast.fusion import prepare_for_training, _WinogradConv
    calls = []
    monkeypatch.setattr(fusion, "winograd_train_conv", lambda *a: calls.append(1) or winograd_train_conv(*a))
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1, stride=2))
    plain = make()
    fast = make()
    fast.load_state_dict(plain.state_dict())
    prepare_for_training(fast, winograd=True, min_channels=16)
    assert [type(m) is _WinogradConv for m in fast] == [False, False, True, False, False]
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 8, 32, 40)  # 1280 pixels: over _WinogradConv.min_pixels
    for model in (plain, fast):
        model(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    assert calls == [1]
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-4 * p.grad.abs().max().item(), name
    fused = fuse_for_inference(fast, winograd=False)
    assert all(type(m) in (nn.Conv2d, nn.ReLU) for m in fused)


def test_training_output_may_be_modified_in_place():
    """torchvision's ResNet applies ReLU(inplace=True) to conv outputs: the Function's output must not be a view."""
    for h, w in [(8, 12), (7, 9)]:
        x = torch.randn(1, 8, h, w, requires_grad=True)
        weight = torch.randn(4, 8, 3, 3, requires_grad=True)
        y = torch.relu_(winograd_train_conv(x, weight, None))
        y.sum().backward()
        ref = torch.relu(F.conv2d(x, weight, padding=1))
        assert torch.allclose(y, ref, atol=1e-4) and x.grad is not None
