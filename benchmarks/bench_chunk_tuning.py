"""Where does our chunkwise delta-rule kernel spend its time, and which launch settings are best on this GPU?

1. Per-kernel breakdown (do_bench medians, bf16) of the six kernels of kernels/delta_rule/chunk.py at each shape.
2. Sweep of (num_warps, num_stages) per kernel, and of the V block of the two sequential kernels, at the shapes given
   by --sweep-shapes; prints the best setting per kernel and shape.
3. Totals forward and forward+backward: ours (defaults, then with the best swept settings) vs fla's chunk_delta_rule.

Writes bench_chunk_tuning.json (+ .md) to --out and prints the summary last.

    python benchmarks/bench_chunk_tuning.py --out /tmp/res
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels.delta_rule.chunk as ck  # noqa: E402

SHAPES = [(8, 2048, 16, 128), (2, 8192, 16, 128), (1, 32768, 16, 128), (8, 2048, 32, 64), (4, 4096, 8, 256)]
KERNELS = ["wy_fwd", "fwd_h", "fwd_o", "bwd_dhu", "bwd_dqkw", "wy_bwd"]
SEQ = {"fwd_h", "bwd_dhu"}
CHUNK_CFGS = [(4, 1), (4, 2), (4, 3), (8, 2)]
SEQ_CFGS = [(bv, nw, ns) for bv in (16, 32, 64) for nw, ns in ((4, 2), (4, 3), (8, 2))]


def bench(fn, rep=60):
    return do_bench(fn, warmup=10, rep=rep, return_mode="median")


def make(B, T, H, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    q = F.normalize(torch.randn(B, T, H, D, **kw), dim=-1).bfloat16()
    k = F.normalize(torch.randn(B, T, H, D, **kw), dim=-1).bfloat16()
    v = torch.randn(B, T, H, D, **kw).bfloat16()
    beta = torch.rand(B, T, H, **kw).bfloat16()
    do = torch.randn(B, T, H, D, **kw).bfloat16()
    return q, k, v, beta, do


def stage_fns(q, k, v, beta, do):
    """Closures launching each kernel once on realistic intermediates (computed once here)."""
    scale = q.shape[-1] ** -0.5
    m = ck._Meta(q, v, None, 64)
    A, w, u = ck._wy_fwd(m, k, v, beta)
    h, v_new, _ = ck._fwd_h(m, k, w, u, None, False)
    dv_new, dh, _ = ck._bwd_dhu(m, q, k, w, do, None, scale, False)
    dq, dk_part, dw = ck._bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale)

    def seq_meta():  # the sequential kernels read SEQ_BV when _Meta is built
        return ck._Meta(q, v, None, 64)

    return {
        "wy_fwd": lambda: ck._wy_fwd(m, k, v, beta),
        "fwd_h": lambda: ck._fwd_h(seq_meta(), k, w, u, None, False),
        "fwd_o": lambda: ck._fwd_o(m, q, k, v_new, h, scale),
        "bwd_dhu": lambda: ck._bwd_dhu(seq_meta(), q, k, w, do, None, scale, False),
        "bwd_dqkw": lambda: ck._bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale),
        "wy_bwd": lambda: ck._wy_bwd(m, k, v, beta, A, dw, dv_new, dk_part),
    }


def totals(q, k, v, beta, do, fn):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v, beta)]

    def fwd():
        with torch.no_grad():
            fn(*xs)

    def fwdbwd():
        fn(*xs)[0].backward(do)

    fwd(), fwdbwd()
    return bench(fwd), bench(fwdbwd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--sweep-shapes", default="8,2048,16,128;1,32768,16,128")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop sweeping after this many seconds")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "command": "python benchmarks/bench_chunk_tuning.py " + " ".join(sys.argv[1:]),
           "default_launch": dict(ck.LAUNCH), "breakdown": {}, "sweep": {}, "totals": {}}
    try:
        from fla.ops.delta_rule import chunk_delta_rule as fla_chunk
        import fla
        res["fla"] = fla.__version__
    except Exception as e:  # noqa: BLE001
        fla_chunk = None
        res["fla"] = f"unavailable: {e}"

    def save():
        (out / "bench_chunk_tuning.json").write_text(json.dumps(res, indent=1))

    ours = lambda q, k, v, b: ck.chunk_delta_rule(q, k, v, b)  # noqa: E731
    # 1. breakdown at every shape, both inverse variants for wy_fwd
    for shape in SHAPES:
        q, k, v, beta, do = make(*shape)
        fns = stage_fns(q, k, v, beta, do)
        row = {name: bench(f) for name, f in fns.items()}
        ck.BLOCKED_INV = False
        row["wy_fwd_rowinv"] = bench(fns["wy_fwd"])
        ck.BLOCKED_INV = True
        res["breakdown"][str(shape)] = row
        print("breakdown", shape, {n: round(t, 4) for n, t in row.items()}, flush=True)
        f0, fb0 = totals(q, k, v, beta, do, ours)
        res["totals"][str(shape)] = {"ours_default": [f0, fb0]}
        if fla_chunk is not None:
            f1, fb1 = totals(q, k, v, beta, do, lambda q, k, v, b: fla_chunk(q, k, v, b))
            res["totals"][str(shape)]["fla"] = [f1, fb1]
        print("totals", shape, res["totals"][str(shape)], flush=True)
        save()
        del q, k, v, beta, do, fns
        torch.cuda.empty_cache()

    # 2. sweep
    for spec in args.sweep_shapes.split(";"):
        shape = tuple(int(x) for x in spec.split(","))
        q, k, v, beta, do = make(*shape)
        fns = stage_fns(q, k, v, beta, do)
        sw = {}
        for name in KERNELS:
            if time.time() - t_start > args.budget_s:
                break
            old = ck.LAUNCH[name]
            cands = SEQ_CFGS if name in SEQ else [(None, nw, ns) for nw, ns in CHUNK_CFGS]
            times = {}
            for bv, nw, ns in cands:
                ck.LAUNCH[name] = (nw, ns)
                ck.SEQ_BV = bv
                try:
                    fns[name]()
                    times[f"{bv},{nw},{ns}"] = bench(fns[name], rep=30)
                except Exception as e:  # noqa: BLE001 (out of resources etc.)
                    times[f"{bv},{nw},{ns}"] = f"{type(e).__name__}"
            ck.LAUNCH[name], ck.SEQ_BV = old, None
            ok = {c: t for c, t in times.items() if isinstance(t, float)}
            best = min(ok, key=ok.get)
            sw[name] = {"times": times, "best": best, "best_ms": ok[best]}
            print("sweep", shape, name, "best", best, round(ok[best], 4), flush=True)
        res["sweep"][str(shape)] = sw
        save()
        del q, k, v, beta, do, fns
        torch.cuda.empty_cache()

    # summary
    lines = ["| shape | ours fwd | fla fwd | ours fwd+bwd | fla fwd+bwd | ratio fwd+bwd |", "|---|---|---|---|---|---|"]
    for shape, t in res["totals"].items():
        o, f = t["ours_default"], t.get("fla", [float("nan")] * 2)
        lines.append(f"| {shape} | {o[0]:.3f} | {f[0]:.3f} | {o[1]:.3f} | {f[1]:.3f} | {o[1] / f[1]:.2f} |")
    (out / "bench_chunk_tuning.md").write_text(res["command"] + "\n\n" + "\n".join(lines) + "\n")
    save()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
