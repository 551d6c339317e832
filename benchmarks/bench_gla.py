"""Is our GLA kernel faster than fla's?  Forward and forward+backward, one GPU, one process.

Providers (bf16 q, k [B, T, H, K], v [B, T, H, D]; g [B, T, H, K] float32 log decays, logsigmoid(randn) / 16 as
GLA's gate makes them):
  ours_chunk   kernels.chunk_gla                  (the shared state walks with the per-channel decay, GLA's own
                                                   within-chunk stages)
  fla_chunk    fla.ops.gla.chunk_gla              (if fla is installed; a comparison peer only)

Shapes are bench_delta_rule.py's (B, T, H, D) with K = V = D by default.  The GLA model uses K = D / 2
(expand_k 0.5): ``--key-ratio 0.5`` benchmarks that shape.  Timing, the table filled over several commands
(``--max-seconds``, ``--resume``) and the outputs (bench_gla.md: table + ratios ours/fla; bench_gla.json) are
``op_bench.py``'s.

    python benchmarks/bench_gla.py --out benchmarks/results --key-ratio 0.5
    python benchmarks/bench_gla.py --out benchmarks/results --key-ratio 0.5 --max-seconds 480
    python benchmarks/bench_gla.py --out benchmarks/results --key-ratio 0.5 --resume   # the cells not yet measured
    python benchmarks/bench_gla.py --out DIR --tiny     # CPU check of the script: one tiny shape under
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
from kernels import chunk_gla  # noqa: E402

NAME = "bench_gla"


def load_providers():
    """name -> callable(q, k, v, g) -> o, or name -> str (why it is unavailable)."""
    out = {"ours_chunk": lambda q, k, v, g: chunk_gla(q, k, v, g)[0]}
    try:
        from fla.ops.gla import chunk_gla as fla_chunk
        out["fla_chunk"] = lambda q, k, v, g: fla_chunk(q, k, v, g)[0]
    except Exception as e:  # noqa: BLE001 - fla is optional
        out["fla_chunk"] = f"fla unavailable ({type(e).__name__})"
    return out


def make_inputs(B, T, H, D, device, dtype, key_ratio=1.0, seed=0):
    K = int(D * key_ratio)
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, generator=gen)
    q = (torch.randn(B, T, H, K, **kw) * K ** -0.25).to(dtype)
    k = (torch.randn(B, T, H, K, **kw) * K ** -0.25).to(dtype)
    v = torch.randn(B, T, H, D, **kw).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, **kw)) / 16  # float32
    do = torch.randn(B, T, H, D, **kw).to(dtype)
    return [x.requires_grad_() for x in (q, k, v, g)], do


def main(argv=None):
    def add_args(ap):
        ap.add_argument("--key-ratio", type=float, default=1.0, help="K = D * ratio (the GLA model: 0.5)")
    return op_bench.main(argv, name=NAME, doc=__doc__, load_providers=load_providers, make_inputs=make_inputs,
                         add_args=add_args, options=lambda a: {"key_ratio": a.key_ratio}, note="K = {key_ratio:g} D, V = D")


if __name__ == "__main__":
    main()
