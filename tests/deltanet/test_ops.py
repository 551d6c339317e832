"""deltanet/layers/ops.py: the one dispatch of the four matrix-state ops.  Its Triton path (interpreted on CPU) equals
its PyTorch path for each op and mode, also at head dims below the kernels' 16 (zero-padded), with an initial state,
the final state and every gradient; bad names, modes and backends raise."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltanet.layers.ops import OPS, matrix_state_op


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(name: str, B: int, T: int, H: int, K: int, V: int, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.rand(B, T, H, generator=gen) * 0.9 + 0.05
    g = -F.softplus(torch.randn(B, T, H, generator=gen))
    gk = -0.3 * F.softplus(torch.randn(B, T, H, K, generator=gen))
    gates = {"delta_rule": [beta], "gated_delta_rule": [g, beta], "simple_gla": [g], "gla": [gk]}[name]
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [x.to(device) for x in (q, k, v, *gates, h0)]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("K,V", [(8, 8), (4, 16), (16, 24)])
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_triton_path_equals_torch_path(triton_runnable, name, K, V, mode):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xs = inputs(name, 2, 19, 2, K, V, device)
    outs = {}
    for backend in ("torch", "triton"):
        leaves = [x.clone().requires_grad_() for x in xs]
        o, s = matrix_state_op(name, *leaves[:-1], backend=backend, mode=mode, chunk_size=16,
                               initial_state=leaves[-1], output_final_state=True)
        assert o.shape == (2, 19, 2, V) and s.shape == (2, 2, K, V)
        gen = torch.Generator().manual_seed(4)
        do, ds = torch.randn(o.shape, generator=gen).to(device), torch.randn(s.shape, generator=gen).to(device)
        grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
        outs[backend] = (o, s, grads)
    (o, s, ga), (ot, st, gt) = outs["torch"], outs["triton"]
    assert rel_err(ot, o) < 1e-5 and rel_err(st, s) < 1e-5
    assert max(rel_err(u, w) for u, w in zip(gt, ga)) < 1e-4
    if mode == "recurrent":  # without gradients the decayed ops take their forward-only recurrent kernel
        with torch.no_grad():
            o2, s2 = matrix_state_op(name, *xs[:-1], backend="triton", mode=mode, initial_state=xs[-1],
                                     output_final_state=True)
        assert rel_err(o2, o) < 1e-5 and rel_err(s2, s) < 1e-5


def test_bad_arguments_raise():
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match="unknown matrix-state op 'delta'"):
        matrix_state_op("delta", q, q, q, q[..., 0], backend="torch", mode="chunk")
    with pytest.raises(ValueError, match="mode must be"):
        matrix_state_op("delta_rule", q, q, q, q[..., 0], backend="torch", mode="parallel")
    with pytest.raises(ValueError, match="backend must be"):
        matrix_state_op("delta_rule", q, q, q, q[..., 0], backend="auto", mode="chunk")
