"""kernels.decode_linear (Triton; under TRITON_INTERPRET=1 on CPU) against float64 products: one to MAX_ROWS rows,
sizes that are not multiples of the blocks, the SwiGLU form, every launch block, and clear errors on bad input."""
from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from kernels import decode_linear, naive_decode_linear
from kernels.decode.linear import MAX_ROWS, choose_blocks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # one rounding of the output


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(shape_x, N, dtype, swiglu, key):
    gen = torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
    K = shape_x[-1]
    x = torch.randn(*shape_x, generator=gen)
    w = torch.randn(N, K, generator=gen) / K ** 0.5
    w2 = torch.randn(N, K, generator=gen) / K ** 0.5 if swiglu else None
    to = dict(device=DEVICE, dtype=dtype)
    return x.to(**to), w.to(**to), (w2.to(**to) if swiglu else None)


def reference(x, w, w2):
    y = F.linear(x.double(), w.double())
    return F.silu(y) * F.linear(x.double(), w2.double()) if w2 is not None else y


@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("shape_x,N", [((1, 40), 37), ((3, 1, 300), 70), ((MAX_ROWS, 16), 9), ((2, 520), 600)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])  # no tl.dot: bf16 interprets
def test_decode_linear_matches_float64(swiglu, shape_x, N, dtype):
    x, w, w2 = inputs(shape_x, N, dtype, swiglu, (swiglu, shape_x, N, dtype))
    y = decode_linear(x, w, w2)
    assert y.shape == (*shape_x[:-1], N) and y.dtype == dtype
    ref = reference(x, w, w2)
    assert rel_err(y, ref) < TOL[dtype]
    assert rel_err(naive_decode_linear(x, w, w2), ref) < TOL[dtype]


@pytest.mark.parametrize("BN,BK,num_warps", [(4, 16, 1), (8, 64, 2), (16, 256, 4), (32, 128, 8)])
def test_every_launch_block_gives_the_same_product(BN, BK, num_warps):
    x, w, w2 = inputs((2, 200), 50, torch.float32, True, ("blocks", BN, BK))
    y = decode_linear(x, w, w2, BN=BN, BK=BK, num_warps=num_warps)
    assert rel_err(y, reference(x, w, w2)) < 1e-5


def test_blocks_give_every_sm_two_programs_when_they_can():
    assert choose_blocks(32000, 1) == 16 and choose_blocks(3088, 1) == 8 and choose_blocks(1024, 1) == 4
    assert choose_blocks(1024, 4) == 8


def test_bad_input_is_named():
    x = torch.randn(1, 16, device=DEVICE)
    w = torch.randn(8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="weight"):
        decode_linear(x, torch.randn(8, 15, device=DEVICE))
    with pytest.raises(ValueError, match="at most"):
        decode_linear(torch.randn(MAX_ROWS + 1, 16, device=DEVICE), w)
    with pytest.raises(ValueError, match="weight2"):
        decode_linear(x, w, torch.randn(8, 16, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match="contiguous"):
        decode_linear(x, torch.randn(16, 8, device=DEVICE).t())
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        decode_linear(x.double(), w.double())
