"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, CVPR 2016), for CPU inference.

A 3x3, stride-1 convolution computes each 4x4 block of outputs from a 6x6 input tile. Winograd's
algorithm transforms every tile (V = B^T d B) and every filter (U = G g G^T, once), multiplies
them per transformed position, summing over input channels, and transforms back (Y = A^T M A).
The channel sums are 36 independent GEMMs (one per tile position) with 36 multiply-adds per 16
outputs where the direct convolution needs 144: 4x fewer. The transforms are small dense GEMMs over
the tiles, which cost memory passes, not FLOPs.

Why: on a CPU the detection head's 256-channel 3x3 convs already run at the machine's peak FLOP
rate, so only fewer FLOPs make them faster (measured ~1.9x per conv on P3 of a 512x800 image, 2
cores). Accuracy: transforms in float64 for the filters and exact small integers for the tiles;
the outputs differ from the float64 convolution by ~1e-5 relative (the direct fp32 conv: ~2e-6),
far below what moves a detection (``tests/test_winograd.py``). cuDNN picks Winograd kernels itself,
so the Detector uses this on CPUs only.
"""
from __future__ import annotations

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
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


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
        k, c = w.shape[:2]
        g = _G.to(w.device)
        u = torch.einsum("ij,kcjl,ml->imck", g, w.to(_D), g).reshape(_A * _A, c, k)  # (36, C, K)
        self.register_buffer("u", u.to(w.dtype).contiguous(), persistent=False)
        self.register_buffer("bt", torch.kron(_BT, _BT).to(w), persistent=False)  # (36, 36)
        self.register_buffer("at", torch.kron(_AT, _AT).to(w), persistent=False)  # (16, 36)
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(k)
        self.register_buffer("bias", bias.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            return self.traceable(x)
        n, c, h, w = x.shape
        if h * w < self.min_pixels or x.dtype != self.u.dtype:
            return self.conv(x)
        th, tw = -(-h // _M), -(-w // _M)
        k = self.u.shape[-1]
        # NHWC, zero-padded by 1 on top/left and up to whole tiles on bottom/right (+1).
        xp = x.new_zeros(n, _M * th + 2, _M * tw + 2, c)
        xp[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
        s_n, s_h, s_w, _ = xp.stride()
        y = x.new_empty(n, th, _M, tw, _M, k)
        # Blocks of tile rows, so that the transformed tiles (36x the block) stay in cache.
        step = max(1, self.block_tiles // (n * tw))
        for r0 in range(0, th, step):
            rows = min(step, th - r0)
            t = n * rows * tw
            # Tile (a, b) starts at row 4a, column 4b: an overlapping strided view, copied once as (36, T*C).
            tiles = xp[:, _M * r0:].as_strided((_A, _A, n, rows, tw, c), (s_h, s_w, s_n, _M * s_h, _M * s_w, 1))
            v = torch.mm(self.bt, tiles.reshape(_A * _A, t * c)).view(_A * _A, t, c)
            m = torch.bmm(v, self.u)  # (36, T, K): the channel sums, one GEMM per tile position
            y4 = torch.mm(self.at, m.view(_A * _A, t * k)).view(_M, _M, n, rows, tw, k)
            # Un-tile and add the bias in one pass.
            torch.add(y4.permute(2, 3, 0, 4, 1, 5), self.bias, out=y[:, r0:r0 + rows])
        return y.view(n, _M * th, _M * tw, k)[:, :h, :w].permute(0, 3, 1, 2)

    def traceable(self, x: Tensor) -> Tensor:
        """The same in NCHW for export: any input size (shapes traced, no blocks, no fallback), and
        only ops that ONNX has (strided slices instead of an overlapping view)."""
        n, c, h, w = x.shape
        th, tw = (h + _M - 1) // _M, (w + _M - 1) // _M
        k = self.u.shape[-1]
        xp = F.pad(x, (1, _M * tw - w + 1, 1, _M * th - h + 1))
        tiles = torch.stack([xp[:, :, r:r + _M * th:_M, q:q + _M * tw:_M] for r in range(_A) for q in range(_A)])
        tiles = tiles.transpose(1, 2).reshape(_A * _A, -1)  # (36, C * N * P), P = th * tw
        v = torch.matmul(self.bt, tiles).reshape(_A * _A, c, -1)  # (36, C, N * P)
        m = torch.matmul(self.u.transpose(1, 2), v)  # (36, K, N * P)
        y = torch.matmul(self.at, m.reshape(_A * _A, -1)).reshape(_M, _M, k, n, th, tw)
        y = y.permute(3, 2, 4, 0, 5, 1).reshape(n, k, _M * th, _M * tw)[:, :, :h, :w]
        return y + self.bias.view(1, -1, 1, 1)


def winograd_convs(model: nn.Module, min_channels: int = 256, min_pixels: int = 100) -> int:
    """Replaces, in place, every eligible 3x3 conv of ``model`` with at least ``min_channels`` input
    channels by a WinogradConv2d. Returns how many. Inference only (no gradients reach the
    original weights). Narrower convs are left direct: there the transforms cost more than they save."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if winograd_eligible(child) and child.in_channels >= min_channels:
                setattr(module, name, WinogradConv2d(child, min_pixels))
                replaced += 1
    return replaced
