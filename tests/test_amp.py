"""bf16 only where it pays: the gating on CPU flags (the flag reader is mocked)."""
from __future__ import annotations

import warnings

import pytest
import torch

from retinanet.engine.amp import autocast_dtype, cpu_flags, cpu_has_native_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_tile", "amx_bf16"}, True), (set(), False)])
def test_native_bf16_from_flags(flags, native):
    assert cpu_has_native_bf16(lambda: frozenset(flags)) is native


def test_bf16_on_cpu_without_native_support_warns_and_still_runs():
    with pytest.warns(RuntimeWarning, match="SLOWER than fp32"):
        assert autocast_dtype("bf16", CPU, flags=lambda: frozenset({"avx2"})) is torch.bfloat16


def test_bf16_on_native_cpu_or_cuda_and_fp32_are_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype("bf16", CPU, flags=lambda: frozenset({"avx512_bf16"})) is torch.bfloat16
        assert autocast_dtype("bf16", torch.device("cuda"), flags=lambda: frozenset()) is torch.bfloat16
        assert autocast_dtype("", CPU, flags=lambda: frozenset()) is None


def test_fp16_needs_cuda_and_real_flags_are_read():
    with pytest.raises(ValueError, match="needs CUDA"):
        autocast_dtype("fp16", CPU)
    assert isinstance(cpu_flags(), frozenset)
