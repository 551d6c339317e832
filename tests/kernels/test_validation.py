"""Bad inputs raise ValueError naming the problem (kernels/common/utils.py, through chunk_delta_rule)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels.delta_rule.chunk import chunk_delta_rule  # noqa: E402
from kernels.common.utils import (  # noqa: E402
    check_triton_runnable,
    prepare_chunk_indices,
    prepare_chunk_offsets,
    validate_inputs,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(B=2, T=8, H=2, K=16, V=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, K, generator=g).to(DEVICE, dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g).to(DEVICE, dtype)
    beta = torch.rand(B, T, H, generator=g).to(DEVICE, dtype)
    return q, k, v, beta


def test_valid_inputs_return_number_of_sequences():
    q, k, v, beta = inputs(B=1, T=10)
    assert validate_inputs(q, k, v, beta) == 1
    cu = torch.tensor([0, 3, 3, 10], device=DEVICE)
    assert validate_inputs(q, k, v, beta, cu_seqlens=cu, chunk_size=32) == 3


@pytest.mark.parametrize(
    "case,match",
    [
        ("q_3d", r"q must be 4-D"),
        ("k_shape", r"k must have q's shape"),
        ("v_shape", r"v must be \[B, T, H, V\]"),
        ("beta_shape", r"beta must be \[B, T, H\]"),
        ("k_dim_small", r"key dim K=8"),
        ("v_dim_large", r"value dim V=300"),
        ("dtype_float64", r"q dtype torch.float64 not supported"),
        ("dtype_mixed", r"v dtype torch.float16 differs"),
        ("chunk_size", r"chunk_size must be one of"),
        ("h0_shape", r"initial_state must be \[N, H, K, V\] = \[2, 2, 16, 16\], got shape \[1, 2, 16, 16\]"),
    ],
)
def test_bad_shapes_and_dtypes_raise(case, match):
    q, k, v, beta = inputs()
    kw = {}
    if case == "q_3d":
        q = q[0]
    elif case == "k_shape":
        k = k[:, :4]
    elif case == "v_shape":
        v = v[:1]
    elif case == "beta_shape":
        beta = beta[..., None]
    elif case == "k_dim_small":
        q, k = q[..., :8], k[..., :8]
    elif case == "v_dim_large":
        v = torch.zeros(*v.shape[:3], 300, device=DEVICE)
    elif case == "dtype_float64":
        q, k, v, beta = (x.double() for x in (q, k, v, beta))
    elif case == "dtype_mixed":
        v = v.half()
    elif case == "chunk_size":
        kw["chunk_size"] = 128
    elif case == "h0_shape":
        kw["initial_state"] = torch.zeros(1, 2, 16, 16, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        chunk_delta_rule(q, k, v, beta, **kw)


@pytest.mark.parametrize(
    "cu,match",
    [
        ([0, 5, 3, 8], r"monotone non-decreasing"),
        ([1, 5, 8], r"must start at 0"),
        ([0, 5, 7], r"must end at T = 8"),
        ([[0, 8]], r"1-D"),
    ],
)
def test_bad_cu_seqlens_raise(cu, match):
    q, k, v, beta = inputs(B=1)
    with pytest.raises(ValueError, match=match):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor(cu, device=DEVICE))


def test_cu_seqlens_needs_batch_one_and_integer_dtype():
    q, k, v, beta = inputs(B=2)
    with pytest.raises(ValueError, match=r"B = 1"):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 8], device=DEVICE))
    q, k, v, beta = inputs(B=1)
    with pytest.raises(ValueError, match=r"cu_seqlens dtype must be int32 or int64"):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0.0, 8.0], device=DEVICE))
    with pytest.raises(ValueError, match=r"initial_state must be \[N, H, K, V\] = \[2,"):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 3, 8], device=DEVICE),
                         initial_state=torch.zeros(1, 2, 16, 16, device=DEVICE))


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    """No silent PyTorch fallback: CPU tensors are refused unless TRITON_INTERPRET=1, pointing to the naive forms."""
    q, k, v, beta = (x.cpu() for x in inputs())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"naive"):
        chunk_delta_rule(q, k, v, beta)
    with pytest.raises(ValueError, match=r"CUDA"):
        check_triton_runnable(q)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_triton_runnable(q)  # allowed through the interpreter


@pytest.mark.gpu
def test_mixed_devices_raise():
    q, k, v, beta = inputs()
    with pytest.raises(ValueError, match=r"k is on cpu but q is on cuda"):
        chunk_delta_rule(q, k.cpu(), v, beta)


def test_chunk_indices_never_cross_sequences():
    cu = torch.tensor([0, 5, 5, 70, 130])
    assert prepare_chunk_indices(cu, 64).tolist() == [[0, 0], [2, 0], [2, 1], [3, 0]]
    assert prepare_chunk_offsets(cu, 64).tolist() == [0, 1, 1, 3, 4]
    assert prepare_chunk_indices(cu, 16).shape[0] == 1 + 0 + 5 + 4
