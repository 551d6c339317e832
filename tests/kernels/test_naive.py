"""The PyTorch references: recurrent and chunkwise (WY/UT) forms against an independent float64 loop."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # importing kernels/ imports triton, which must see TRITON_INTERPRET=1 first for the Triton tests that follow
    os.environ["TRITON_INTERPRET"] = "1"

from kernels import naive_chunk_delta_rule, naive_recurrent_delta_rule  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_inputs(seed, B, T, H, K, V, N=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    h0 = torch.randn(N or B, H, K, V, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, beta, h0)]


def loop_reference(q, k, v, beta, h0, scale):
    """The definition, one (batch, head) at a time, in float64, written independently of naive.py."""
    B, T, H, K = q.shape
    o = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    S_all = h0.double().clone()
    for b in range(B):
        for h in range(H):
            S = S_all[b, h]
            for t in range(T):
                kt, vt, qt, bt = k[b, t, h].double(), v[b, t, h].double(), q[b, t, h].double(), beta[b, t, h].double()
                S = S + bt * torch.outer(kt, vt - S.T @ kt)
                o[b, t, h] = scale * S.T @ qt
            S_all[b, h] = S
    return o, S_all


@pytest.mark.parametrize("T", [1, 29, 70])
def test_recurrent_and_chunk_match_loop(T):
    q, k, v, beta, h0 = make_inputs(T, 2, T, 2, 16, 24)
    ro, rs = loop_reference(q, k, v, beta, h0, 16 ** -0.5)
    o, s = naive_recurrent_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel(o, ro) < 1e-5 and rel(s, rs) < 1e-5
    for C in (16, 32, 64):
        o, s = naive_chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, chunk_size=C)
        assert rel(o, ro) < 1e-5 and rel(s, rs) < 1e-5, C


def test_chunk_gradients_match_recurrent_float64():
    ins = make_inputs(1, 1, 45, 2, 48, 100, dtype=torch.float64)  # K=48, V=100: neither a power of two
    a = [x.clone().requires_grad_() for x in ins]
    b = [x.clone().requires_grad_() for x in ins]
    o1, s1 = naive_recurrent_delta_rule(*a[:4], scale=0.7, initial_state=a[4], output_final_state=True)
    o2, s2 = naive_chunk_delta_rule(*b[:4], scale=0.7, initial_state=b[4], output_final_state=True, chunk_size=16)
    assert o2.dtype == torch.float64 and s2.dtype == torch.float64  # float64 stays float64
    g = torch.Generator().manual_seed(2)
    do, ds = torch.randn(o1.shape, generator=g, dtype=torch.float64), torch.randn(s1.shape, generator=g, dtype=torch.float64)
    torch.autograd.backward([o1, s1], [do, ds])
    torch.autograd.backward([o2, s2], [do, ds])
    assert rel(o2, o1) < 1e-12 and rel(s2, s1) < 1e-12
    for name, x, y in zip(("dq", "dk", "dv", "dbeta", "dh0"), a, b):
        assert rel(y.grad, x.grad) < 1e-10, name


def test_chunk_gradcheck_small():
    ins = make_inputs(3, 1, 6, 1, 4, 3, dtype=torch.float64)  # the references accept any head size
    ins = [x.requires_grad_() for x in ins]

    def f(q, k, v, beta, h0):
        return naive_chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, chunk_size=4)

    assert torch.autograd.gradcheck(f, tuple(ins))


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("fn", [naive_recurrent_delta_rule, naive_chunk_delta_rule])
def test_varlen_equals_separate_sequences(fn, idx_dtype):
    cu = [0, 13, 13, 40, 47]  # includes an empty sequence
    q, k, v, beta, h0 = make_inputs(4, 1, 47, 2, 16, 16, N=4)
    o, s = fn(q, k, v, beta, initial_state=h0, output_final_state=True, cu_seqlens=torch.tensor(cu, dtype=idx_dtype))
    for i in range(4):
        a, b = cu[i], cu[i + 1]
        ro, rs = loop_reference(q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b], h0[i:i + 1], 16 ** -0.5)
        assert (s[i] - rs[0]).abs().max() < 1e-5
        if b > a:
            assert rel(o[:, a:b], ro) < 1e-5


def test_low_precision_inputs_keep_dtypes():
    q, k, v, beta, h0 = make_inputs(5, 1, 33, 1, 16, 16, dtype=torch.bfloat16)
    o, s = naive_chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, chunk_size=16)
    ro, rs = loop_reference(q, k, v, beta, h0, 16 ** -0.5)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel(o, ro) < 1e-2 and rel(s, rs) < 1e-4  # computed in float32 from the bf16 inputs
    o, s = naive_recurrent_delta_rule(q, k, v, beta)
    assert o.dtype == torch.bfloat16 and s is None


def test_bad_shapes_raise_value_error():
    q, k, v, beta, h0 = make_inputs(6, 2, 8, 1, 16, 16)
    with pytest.raises(ValueError, match="beta"):
        naive_chunk_delta_rule(q, k, v, beta[..., :0])
    with pytest.raises(ValueError, match="cu_seqlens"):
        naive_recurrent_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 8, 16]))
    with pytest.raises(ValueError, match="initial_state"):
        naive_chunk_delta_rule(q, k, v, beta, initial_state=h0[:1])
