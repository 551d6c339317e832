"""Is our retention (RetNet) kernel faster than fla's?  Forward and forward+backward, one GPU, one process.

Retention is linear attention with a fixed decay per head, gamma_h = 1 - 2^(-5 - h) (the paper's multi-scale
decays): our ``kernels.chunk_simple_gla`` with g = log gamma_h at every token, as ``deltanet/layers/retnet.py``
calls it (g fixed: no gradient).  Providers (bf16 q, k [B, T, H, K], v [B, T, H, V]; K = D, V = D * --value-ratio):
  ours_chunk     kernels.chunk_simple_gla                 (the shared state walks with a scalar decay)
  fla_chunk      fla.ops.simple_gla.chunk_simple_gla       (the same op and g; if fla is installed)
  fla_chunk_unguarded   fla_chunk with fla's refusal of its gated backward on Hopper under Triton >= 3.4, < 3.7.1
                 lifted (``op_bench.fla_gated_backward_guard``): timed only, fla says its gradients there are wrong
  fla_retention  fla.ops.retention.chunk_retention         (fla's retention, its decays built inside; if installed)

Shapes are bench_delta_rule.py's (B, T, H, D).  The RetNet model uses V = 2 K: ``--value-ratio 2``.  Timing, the
table filled over several commands (``--max-seconds``, ``--resume``) and the outputs (bench_retention.md: table +
ratios against fla_chunk, fla_chunk_unguarded and fla_retention; bench_retention.json) are ``op_bench.py``'s.

    python benchmarks/bench_retention.py --out benchmarks/results --value-ratio 2
    python benchmarks/bench_retention.py --out benchmarks/results --value-ratio 2 --resume   # the cells not yet measured
    python benchmarks/bench_retention.py --out DIR --tiny     # CPU check of the script: one tiny shape under
                                                              # TRITON_INTERPRET=1, wall-clock timing
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import op_bench  # noqa: E402  (first: with --tiny on CPU it sets TRITON_INTERPRET before triton loads)
from kernels import chunk_simple_gla  # noqa: E402

NAME = "bench_retention"


def load_providers():
    """name -> callable(q, k, v, g) -> o, or name -> str (why it is unavailable)."""
    out = {"ours_chunk": lambda q, k, v, g: chunk_simple_gla(q, k, v, g)[0]}
    try:
        from fla.ops.simple_gla import chunk_simple_gla as fla_chunk
        out["fla_chunk"], out["fla_chunk_unguarded"] = op_bench.fla_op(fla_chunk), op_bench.fla_op(fla_chunk, False)
    except Exception as e:  # noqa: BLE001 - fla is optional
        out["fla_chunk"] = out["fla_chunk_unguarded"] = f"fla unavailable ({type(e).__name__})"
    try:
        from fla.ops.retention import chunk_retention as fla_retention
        out["fla_retention"] = op_bench.fla_op(lambda q, k, v, g: fla_retention(q, k, v))  # its decays built inside
    except Exception as e:  # noqa: BLE001
        out["fla_retention"] = f"fla unavailable ({type(e).__name__})"
    return out


def make_inputs(B, T, H, D, device, dtype, value_ratio=1.0, seed=0):
    V = int(D * value_ratio)
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, generator=gen)
    q = (torch.randn(B, T, H, D, **kw) * D ** -0.25).to(dtype).requires_grad_()
    k = (torch.randn(B, T, H, D, **kw) * D ** -0.25).to(dtype).requires_grad_()
    v = torch.randn(B, T, H, V, **kw).to(dtype).requires_grad_()
    log_gamma = torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(H)], device=device)
    g = log_gamma[None, None, :].expand(B, T, H)  # fixed, as the layer passes it
    do = torch.randn(B, T, H, V, **kw).to(dtype)
    return [q, k, v, g], do


def main(argv=None):
    def add_args(ap):
        ap.add_argument("--value-ratio", type=float, default=1.0, help="V = D * ratio (the RetNet model: 2)")
    return op_bench.main(argv, name=NAME, doc=__doc__, load_providers=load_providers, make_inputs=make_inputs,
                         add_args=add_args, options=lambda a: {"value_ratio": a.value_ratio},
                         note="K = D, V = {value_ratio:g} D",
                         providers=["ours_chunk", "fla_chunk", "fla_chunk_unguarded", "fla_retention"],
                         ratio=[("ours_chunk", "fla_chunk", "ours/fla"),
                                ("ours_chunk", "fla_chunk_unguarded", "ours/fla, guard lifted"),
                                ("ours_chunk", "fla_retention", "ours/fla_retention")])


if __name__ == "__main__":
    main()
