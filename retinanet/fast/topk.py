"""``torch.topk`` over the rows of a long matrix: the same values and indices, faster on long rows.

Post-processing takes the top 1,000 of H * W * A * K logits per level and image: at 800 px, P3 has
11 million. ``torch.topk`` on a CPU selects among all of them, in several passes over the row. Here
a strided sample of each row gives a threshold that about ``2 * k`` entries are expected to reach; the
selection then runs over those entries only. If fewer than ``k`` reach it, the row goes through
``torch.topk`` as a whole, so the result is always exact.
"""
from __future__ import annotations

import torch
from torch import Tensor

_STEP = 64  # sample every 64th entry: a small sort, and a threshold close to the k-th value


def topk_rows(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """x (N, L), k <= L -> (values (N, k), indices (N, k)), largest first, as ``x.topk(k, dim=1)``."""
    if x.shape[1] < 8 * _STEP * k or x.device.type != "cpu":  # short rows (or a GPU): plain top-k is fast
        return x.topk(k, dim=1)
    values, indices = [], []
    for row in x:  # rows keep different numbers of entries above their thresholds
        sample = row[::_STEP]
        threshold = sample.topk(-(-2 * k // _STEP)).values[-1]
        idx = _reaching(row, threshold)
        if idx.numel() < k:
            v, i = row.topk(k)
        else:
            v, i = row[idx].topk(k)
            i = idx[i]
        values.append(v)
        indices.append(i)
    return torch.stack(values), torch.stack(indices)


def _reaching(row: Tensor, threshold: Tensor) -> Tensor:
    """Indices (ascending) of the entries of ``row`` (L,) that are not below ``threshold``, NaN included
    (topk ranks it first). Few entries reach it, so blocks of ``_STEP`` are screened by their maximum
    first: one parallel pass, where ``nonzero`` over the whole row would be a serial one."""
    n = row.shape[0] // _STEP * _STEP
    blocks = row[:n].reshape(-1, _STEP)
    hit = (blocks.amax(1) < threshold).logical_not_().nonzero().squeeze(1)  # amax keeps NaN
    cells = (blocks[hit] < threshold).logical_not_().nonzero()  # (entries, 2): block, column
    tail = (row[n:] < threshold).logical_not_().nonzero().squeeze(1) + n
    return torch.cat([hit[cells[:, 0]] * _STEP + cells[:, 1], tail])
