"""fast/topk.py gives torch.topk's values and indices, on every branch."""
from __future__ import annotations

import pytest
import torch

from retinanet.fast.topk import _STEP, topk_rows

K = 50
L = 8 * _STEP * K  # the shortest row that takes the sampled path


def _rows(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, L + 123, generator=g)
    if kind == "trained":  # almost every logit far below the few positives
        x = x - 8
        x[:, torch.randint(0, x.shape[1], (20,), generator=g)] += 12
    elif kind == "nan":
        x[1, 7] = float("nan")
        x[2, ::999] = float("nan")
    elif kind == "tail":  # winners and a NaN among the last entries, past the whole blocks that are screened
        x[:, -3] = 100
        x[0, -1] = float("nan")
    elif kind == "sample_misleads":  # the sampled entries hold the largest values: too few reach the threshold
        x[:, ::_STEP] = 10 + torch.arange(x[:, ::_STEP].shape[1], dtype=x.dtype)
    return x


@pytest.mark.parametrize("kind", ["random", "trained", "nan", "tail", "sample_misleads"])
def test_same_values_and_indices_as_torch_topk(kind):
    x = _rows(kind)
    values, indices = topk_rows(x, K)
    ref_values, ref_indices = x.topk(K, dim=1)
    torch.testing.assert_close(values, ref_values, equal_nan=True, rtol=0, atol=0)
    nan = ref_values.isnan()
    assert torch.equal(indices[~nan], ref_indices[~nan])
    for row in range(x.shape[0]):  # NaNs rank first, in no specified order among themselves
        assert indices[row][nan[row]].sort().values.tolist() == ref_indices[row][nan[row]].sort().values.tolist()
    assert kind != "nan" or nan.sum() > 1
    assert kind != "tail" or (indices == x.shape[1] - 3).any(1).all() and indices[0, 0] == x.shape[1] - 1


def test_short_rows_take_plain_topk():
    x = torch.randn(2, 100)
    assert torch.equal(topk_rows(x, 10)[1], x.topk(10, dim=1)[1])
