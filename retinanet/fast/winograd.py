"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, CVPR 2016), for CPUs.

A 3x3, stride-1 convolution computes each 4x4 block of outputs from a 6x6 input tile. Winograd's
algorithm transforms every tile (V = B^T d B) and every filter (U = G g G^T, once), multiplies
them per transformed position, summing over input channels, and transforms back (Y = A^T M A).
The channel sums are 36 independent GEMMs (one per tile position) with 36 multiply-adds per 16
outputs where the direct convolution needs 144: 4x fewer. The transforms are small dense GEMMs over
the tiles, which cost memory passes, not FLOPs.

Why: on a CPU the detection head's 256-channel 3x3 convs already run at the machine's peak FLOP
rate, so only fewer FLOPs make them faster. Accuracy: transforms in float64 for the filters and exact
small integers for the tiles; the outputs differ from the float64 convolution by ~1e-5 relative (the
direct fp32 conv: ~2e-6), far below what moves a detection (``tests/test_winograd.py``). Used by the
Detector's inference copy (``WinogradConv2d``), by training (``winograd_train_conv``, whose backward is
in the Winograd domain too) and by ONNX export (``WinogradConv2d.traceable``). cuDNN picks Winograd
kernels itself, so all of this is for CPUs only.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_D = torch.float64
# F(4x4, 3x3) with interpolation points 0, +-1, +-2, infinity (Lavin & Gray, section 4).
_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=_D)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=_D)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=_D)
_M, _A = 4, 6  # output tile, input tile


def winograd_eligible(conv: nn.Module) -> bool:
    """A plain 3x3 conv with stride 1 and padding 1 (same-size output), no dilation or groups."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def transform_filters(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> U = G g G^T as (36, C, K), computed in float64 (the thirds and sixths of
    G round otherwise). Differentiable: training transforms the live weights every step."""
    u = torch.einsum("ij,kcjl,ml->imck", _G.to(weight.device), weight.to(_D), _G.to(weight.device))
    return u.reshape(_A * _A, weight.shape[1], weight.shape[0]).to(weight.dtype)


@functools.lru_cache(maxsize=None)
def _kron(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """B^T (x) B^T (36, 36) and A^T (x) A^T (16, 36): both transforms of a whole tile as one small GEMM."""
    return torch.kron(_BT, _BT).to(device, dtype), torch.kron(_AT, _AT).to(device, dtype)


def _blocks(n: int, th: int, tw: int, block_tiles: int) -> list[tuple[int, int]]:
    """(first tile row, tile rows) blocks of about ``block_tiles`` tiles: the transformed tiles of a
    block (36x its size) then stay in cache between the three GEMMs."""
    step = max(1, block_tiles // (n * tw))
    return [(r0, min(step, th - r0)) for r0 in range(0, th, step)]


def winograd_conv(x: Tensor, u: Tensor, bias: Optional[Tensor], block_tiles: int = 128,
                  saved: Optional[list[Tensor]] = None, relu: bool = False) -> Tensor:
    """3x3/stride-1/padding-1 convolution of x (N, C, H, W) with transformed filters u (36, C, K)
    -> (N, K, H, W) channels_last, then a ReLU if ``relu`` (on each block while it is in cache).
    ``saved`` collects each block's transformed tiles (for backward)."""
    n, c, h, w = x.shape
    k = u.shape[-1]
    th, tw = -(-h // _M), -(-w // _M)
    bt, at = _kron(x.device, x.dtype)
    # NHWC, zero-padded by 1 on top/left and up to whole tiles on bottom/right (+1).
    xp = x.new_zeros(n, _M * th + 2, _M * tw + 2, c)
    xp[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    s_n, s_h, s_w, _ = xp.stride()
    out = torch.empty(n, k, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    ragged = h % _M or w % _M  # then un-tile into a padded buffer and crop once
    y = (x.new_empty(n, _M * th, _M * tw, k) if ragged else out.permute(0, 2, 3, 1)).view(n, th, _M, tw, _M, k)
    for r0, rows in _blocks(n, th, tw, block_tiles):
        t = n * rows * tw
        # Tile (a, b) starts at row 4a, column 4b: an overlapping strided view, copied once as (36, T*C).
        tiles = xp[:, _M * r0:].as_strided((_A, _A, n, rows, tw, c), (s_h, s_w, s_n, _M * s_h, _M * s_w, 1))
        v = torch.mm(bt, tiles.reshape(_A * _A, t * c)).view(_A * _A, t, c)
        m = torch.bmm(v, u)  # (36, T, K): the channel sums, one GEMM per tile position
        y4 = torch.mm(at, m.view(_A * _A, t * k)).view(_M, _M, n, rows, tw, k)
        block = y[:, r0:r0 + rows]
        if bias is None:  # un-tile (and add the bias) in one pass
            block.copy_(y4.permute(2, 3, 0, 4, 1, 5))
        else:
            torch.add(y4.permute(2, 3, 0, 4, 1, 5), bias, out=block)
        if relu:
            block.clamp_(min=0)
        if saved is not None:
            saved.append(v)
    if ragged:
        out.permute(0, 2, 3, 1).copy_(y.view(n, _M * th, _M * tw, k)[:, :h, :w])
    return out  # not a view: autograd lets callers modify it in place (ReLU(inplace=True))


class _WinogradFunction(torch.autograd.Function):
    """winograd_conv with its backward in the Winograd domain too: the gradient GEMMs shrink by the
    same 4x. Gradients reach x, u (and through transform_filters the weight) and the bias."""

    @staticmethod
    def forward(ctx, x: Tensor, u: Tensor, bias: Optional[Tensor], block_tiles: int) -> Tensor:
        saved: list[Tensor] = []
        y = winograd_conv(x, u, bias, block_tiles, saved)
        ctx.save_for_backward(u, *saved)
        ctx.shape, ctx.block_tiles, ctx.has_bias = x.shape, block_tiles, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        u, *saved = ctx.saved_tensors
        n, c, h, w = ctx.shape
        k = u.shape[-1]
        th, tw = -(-h // _M), -(-w // _M)
        bt, at = _kron(grad_y.device, grad_y.dtype)
        gy = grad_y.new_zeros(n, _M * th, _M * tw, k)  # NHWC, zero beyond the image
        gy[:, :h, :w] = grad_y.permute(0, 2, 3, 1)
        gxp = grad_y.new_zeros(n, _M * th + 2, _M * tw + 2, c) if ctx.needs_input_grad[0] else None
        grad_u = torch.zeros_like(u) if ctx.needs_input_grad[1] else None
        for (r0, rows), v in zip(_blocks(n, th, tw, ctx.block_tiles), saved):
            t = n * rows * tw
            # Each output tile's 16 values -> the 36 transformed positions: A M, transposed.
            gt = gy[:, _M * r0:_M * (r0 + rows)].view(n, rows, _M, tw, _M, k).permute(2, 4, 0, 1, 3, 5)
            gm = torch.mm(at.t(), gt.reshape(_M * _M, t * k)).view(_A * _A, t, k)
            if grad_u is not None:
                grad_u.baddbmm_(v.transpose(1, 2), gm)
            if gxp is None:
                continue
            gv = torch.bmm(gm, u.transpose(1, 2))  # (36, T, C)
            gtiles = torch.mm(bt.t(), gv.view(_A * _A, t * c)).view(_A, _A, n, rows, tw, c)
            # Tiles overlap by two rows and columns: accumulate each tile position's strided slice.
            for r in range(_A):
                for q in range(_A):
                    gxp[:, _M * r0 + r:_M * (r0 + rows) + r:_M, q:q + _M * tw:_M] += gtiles[r, q]
        grad_x = gxp[:, 1:h + 1, 1:w + 1].permute(0, 3, 1, 2) if gxp is not None else None
        grad_b = grad_y.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_u, grad_b, None


def winograd_train_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], block_tiles: int = 128) -> Tensor:
    """Differentiable Winograd 3x3 convolution (the conv's ``weight`` (K, C, 3, 3) and ``bias`` (K,))."""
    return _WinogradFunction.apply(x, transform_filters(weight), bias, block_tiles)


class WinogradConv2d(nn.Module):
    """Inference replacement for a 3x3/stride-1/padding-1 ``nn.Conv2d``: the same outputs to float rounding.

    Input (N, C, H, W), best channels_last; output (N, K, H, W), channels_last. Maps smaller than
    ``min_pixels`` (H * W) run the direct convolution, which is faster there. The filters are
    transformed once, here: build a new module when the conv's weights change.
    """

    def __init__(self, conv: nn.Conv2d, min_pixels: int = 100, block_tiles: int = 128):
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3 conv with stride 1 and padding 1, got {conv}")
        self.conv, self.min_pixels, self.block_tiles = conv, min_pixels, block_tiles
        w = conv.weight.detach()
        self.register_buffer("u", transform_filters(w).contiguous(), persistent=False)
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])
        self.register_buffer("bias", bias.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            return self.traceable(x)
        if x.shape[-2] * x.shape[-1] < self.min_pixels or x.dtype != self.u.dtype:
            return self.conv(x)
        return winograd_conv(x, self.u, self.bias, self.block_tiles)

    def traceable(self, x: Tensor) -> Tensor:
        """The same in NCHW for export: any input size (shapes traced, no blocks, no fallback), and
        only ops that ONNX has (strided slices instead of an overlapping view)."""
        n, c, h, w = x.shape
        th, tw = (h + _M - 1) // _M, (w + _M - 1) // _M
        k = self.u.shape[-1]
        bt, at = _kron(x.device, x.dtype)
        xp = F.pad(x, (1, _M * tw - w + 1, 1, _M * th - h + 1))
        tiles = torch.stack([xp[:, :, r:r + _M * th:_M, q:q + _M * tw:_M] for r in range(_A) for q in range(_A)])
        tiles = tiles.transpose(1, 2).reshape(_A * _A, -1)  # (36, C * N * P), P = th * tw
        v = torch.matmul(bt, tiles).reshape(_A * _A, c, -1)  # (36, C, N * P)
        m = torch.matmul(self.u.transpose(1, 2), v)  # (36, K, N * P)
        y = torch.matmul(at, m.reshape(_A * _A, -1)).reshape(_M, _M, k, n, th, tw)
        y = y.permute(3, 2, 4, 0, 5, 1).reshape(n, k, _M * th, _M * tw)[:, :, :h, :w]
        return y + self.bias.view(1, -1, 1, 1)


def winograd_convs(model: nn.Module, min_channels: int = 256, min_pixels: int = 100) -> int:
    """Replaces, in place, every eligible 3x3 conv of ``model`` with at least ``min_channels`` input
    channels by a WinogradConv2d. Returns how many. Inference only (no gradients reach the
    original weights). Narrower convs are left direct: there the transforms cost more than they save."""
    replaced = 0
    for module in list(model.modules()):
        if isinstance(module, WinogradConv2d):  # already replaced: its ``conv`` is the fallback
            continue
        for name, child in list(module.named_children()):
            if winograd_eligible(child) and child.in_channels >= min_channels:
                setattr(module, name, WinogradConv2d(child, min_pixels))
                replaced += 1
    return replaced
