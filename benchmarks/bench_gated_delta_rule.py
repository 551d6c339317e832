"""Is our Gated DeltaNet kernel faster than fla's?  Forward and forward+backward, one GPU, one process.

Providers (bf16 q, k, v, beta [B, T, H, D] with K = V = D; g [B, T, H] float32 log decays, -softplus(randn)):
  ours_chunk   kernels.chunk_gated_delta_rule                 (the delta-rule stages with the decay folded in)
  fla_chunk    fla.ops.gated_delta_rule.chunk_gated_delta_rule (if fla is installed; a comparison peer only)
  fla_chunk_unguarded   the same with fla's refusal of its gated backward lifted (below): timed only

Shapes are bench_delta_rule.py's.  Timing, the table filled over several commands (``--max-seconds``,
``--resume``) and the outputs (bench_gated_delta_rule.md: table + ratios ours/fla; bench_gated_delta_rule.json) are
``op_bench.py``'s.  fla 0.6 refuses its gated backward on Hopper under Triton >= 3.4, < 3.7.1 (it would be wrong
there, fla says): those cells of fla_chunk read ``failed: RuntimeError``.  fla_chunk_unguarded lifts the refusal
(``op_bench.fla_gated_backward_guard``) to time the same kernels; the second ratio column is against it, a speed
comparison only: fla's gradients there are not checked, and fla says they are wrong.

    python benchmarks/bench_gated_delta_rule.py --out benchmarks/results
    python benchmarks/bench_gated_delta_rule.py --out benchmarks/results --resume   # the cells not yet measured
    python benchmarks/bench_gated_delta_rule.py --out DIR --tiny     # CPU check of the script: one tiny shape under
                                                                     # TRITON_INTERPRET=1, wall-clock timing
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
from kernels import chunk_gated_delta_rule  # noqa: E402

NAME = "bench_gated_delta_rule"


def load_providers():
    """name -> callable(q, k, v, g, beta) -> o, or name -> str (why it is unavailable)."""
    out = {"ours_chunk": lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b)[0]}
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
        out["fla_chunk"], out["fla_chunk_unguarded"] = op_bench.fla_op(fla_chunk), op_bench.fla_op(fla_chunk, False)
    except Exception as e:  # noqa: BLE001 - fla is optional
        out["fla_chunk"] = out["fla_chunk_unguarded"] = f"fla unavailable ({type(e).__name__})"
    return out


def make_inputs(B, T, H, D, device, dtype, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, generator=gen)
    q = F.normalize(torch.randn(B, T, H, D, **kw), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, D, **kw), dim=-1).to(dtype)
    v = torch.randn(B, T, H, D, **kw).to(dtype)
    g = -F.softplus(torch.randn(B, T, H, **kw))  # float32
    beta = torch.rand(B, T, H, **kw).to(dtype)
    do = torch.randn(B, T, H, D, **kw).to(dtype)
    return [x.requires_grad_() for x in (q, k, v, g, beta)], do


def main(argv=None):
    return op_bench.main(argv, name=NAME, doc=__doc__, load_providers=load_providers, make_inputs=make_inputs,
                         providers=["ours_chunk", "fla_chunk", "fla_chunk_unguarded"],
                         ratio=[("ours_chunk", "fla_chunk", "ours/fla"),
                                ("ours_chunk", "fla_chunk_unguarded", "ours/fla, guard lifted")])


if __name__ == "__main__":
    main()
