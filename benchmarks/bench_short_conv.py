"""Is the fused short convolution faster than the plain PyTorch one?  Forward and forward+backward, one process.

The DeltaNet layer's three short convolutions over its fused projection: (B, T, 3 H D) in, q and k with SiLU and the
per-head L2 norm, v with SiLU, kernel 4.  Providers (bf16):
  ours    kernels.short_conv_multi: one kernel per part forward (x read once, the output written once); backward
          dy, then dx with the weight gradient (kernels/README.md: conv launch settings)
  torch   the unfused layer's form: F.conv1d on a transposed, zero-padded copy per part, F.silu, F.normalize

Shapes are (B, T, H, D); the 340M layer is H = 8, D = 128.  Timing, resuming and the outputs (bench_short_conv.md:
table + ratios ours/torch; bench_short_conv.json) are ``op_bench.py``'s.

    python benchmarks/bench_short_conv.py --out benchmarks/results --shapes 1,16384,8,128 2,8192,8,128 8,2048,8,128
    python benchmarks/bench_short_conv.py --out DIR --tiny    # CPU check of the script under TRITON_INTERPRET=1
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import op_bench  # noqa: E402  (first: with --tiny on CPU it sets TRITON_INTERPRET before triton loads)
from kernels.conv import short_conv_multi  # noqa: E402

NAME = "bench_short_conv"
W = 4


def _torch_convs(x, wq, wk, wv, D):
    """The three parts as the unfused layer computes them; returns one tensor so a single do drives the backward."""
    D, outs = int(D), []
    for part, (w, norm) in enumerate(((wq, True), (wk, True), (wv, False))):
        xs = x[..., part * w.shape[0]:(part + 1) * w.shape[0]].transpose(1, 2)  # (B, C, T)
        y = F.silu(F.conv1d(F.pad(xs, (W - 1, 0)), w.to(x.dtype)[:, None, :], groups=w.shape[0]).transpose(1, 2))
        if norm:
            y = F.normalize(y.unflatten(-1, (-1, D)), dim=-1).flatten(-2)
        outs.append(y.to(x.dtype))
    return torch.cat(outs, -1)


def load_providers():
    """name -> callable(x, wq, wk, wv, D) -> o (B, T, 3 H D)."""
    def ours(x, wq, wk, wv, D):
        D = int(D)
        return torch.cat(short_conv_multi(x, [wq, wk, wv], ["silu"] * 3, [D, D, None]), -1)
    return {"ours": ours, "torch": _torch_convs}


def make_inputs(B, T, H, D, device, dtype, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, generator=gen)
    x = torch.randn(B, T, 3 * H * D, **kw).to(dtype).requires_grad_()
    ws = [(torch.randn(H * D, W, **kw) * 0.5).requires_grad_() for _ in range(3)]
    do = torch.randn(B, T, 3 * H * D, **kw).to(dtype)
    return [x, *ws, torch.tensor(D)], do  # D as a CPU tensor: do_bench resets the grads of every input


def main(argv=None):
    return op_bench.main(argv, name=NAME, doc=__doc__, load_providers=load_providers, make_inputs=make_inputs,
                         note="three parts of H D channels (q, k normed per head), kernel 4",
                         providers=["ours", "torch"], ratio=("ours", "torch", "ours/torch"))


if __name__ == "__main__":
    main()
