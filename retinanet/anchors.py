"""Multi-scale anchors over the P3-P7 grids.

Order everywhere (native and torchvision-compatible): level, then location (row-major), then the
A = len(ratios) * len(scales) cell anchors, ratio-major. The head's channels follow the same
order, so weights trained in one geometry keep their meaning in the other.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


class AnchorGenerator(torch.nn.Module):
    """Builds anchors for feature maps of given sizes; caches them per (image size, grid sizes).

    Native geometry (Detectron2/MMDetection): float sizes ``size * scale``, exact strides, cell
    anchors centred on ``(x * stride, y * stride)``.
    ``torchvision_compat=True`` reproduces torchvision's ``AnchorGenerator``: sizes truncated to
    int, base anchors rounded, strides computed as ``padded_image_size // grid_size``.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        torchvision_compat: bool = False,
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"anchors: {len(sizes)} sizes but {len(strides)} strides")
        self.strides = [int(s) for s in strides]
        self.torchvision_compat = torchvision_compat
        self.cell_anchors = [self._cell_anchors(size, scales, ratios) for size in sizes]
        self.num_anchors = len(scales) * len(ratios)
        self._cache: dict[tuple, Tensor] = {}

    def _cell_anchors(self, size: float, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
        """(A, 4) xyxy anchors centred at 0, ratio-major; ratio = height / width."""
        if self.torchvision_compat:
            # torchvision: int(32 * 2**(1/3)) == 40, float32 math, then round.
            s = torch.tensor([int(size * sc) for sc in scales], dtype=torch.float32)
            r = torch.tensor(list(ratios), dtype=torch.float32)
            h_ratios = torch.sqrt(r)
            ws = ((1 / h_ratios)[:, None] * s[None, :]).reshape(-1)
            hs = (h_ratios[:, None] * s[None, :]).reshape(-1)
            return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        rows = []
        for ratio in ratios:
            for scale in scales:
                area = (size * scale) ** 2
                w = math.sqrt(area / ratio)
                h = w * ratio
                rows.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(rows, dtype=torch.float64).float()

    def forward(self, image_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]],
                device: torch.device) -> Tensor:
        """Anchors (R, 4) xyxy in fp32 for a padded batch of ``image_size`` (H, W); R = sum(H_l W_l A)."""
        key = (tuple(image_size), tuple(tuple(g) for g in grid_sizes), str(device))
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = torch.cat([
                self._grid(cell, grid, self._stride(image_size, grid, nominal), device)
                for cell, grid, nominal in zip(self.cell_anchors, grid_sizes, self.strides)
            ])
            if len(self._cache) > 64:  # multi-scale training sees a bounded set of sizes
                self._cache.clear()
            self._cache[key] = anchors
        return anchors

    def _stride(self, image_size: tuple[int, int], grid: tuple[int, int], nominal: int) -> tuple[int, int]:
        if self.torchvision_compat:
            return image_size[0] // grid[0], image_size[1] // grid[1]
        return nominal, nominal

    @staticmethod
    def _grid(cell: Tensor, grid: tuple[int, int], stride: tuple[int, int], device: torch.device) -> Tensor:
        h, w = grid
        ys = torch.arange(h, device=device, dtype=torch.float32) * stride[0]
        xs = torch.arange(w, device=device, dtype=torch.float32) * stride[1]
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
        return (shifts + cell.to(device).view(1, -1, 4)).reshape(-1, 4)
