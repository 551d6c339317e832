"""Where does our chunkwise delta-rule kernel spend its time, and which launch settings are best on this GPU?

1. Per-kernel breakdown (do_bench medians, bf16) of the kernels of kernels/delta_rule/chunk.py at each shape.
2. Sweep of (num_warps, num_stages) per kernel, and of the V block of the two sequential kernels, at the shapes given
   by --sweep-shapes; prints the best setting per kernel and shape.
3. Totals forward and forward+backward: ours (defaults, then with the best swept settings) vs fla's chunk_delta_rule.

With --tiles the chunk-parallel kernels are swept over (BK, BV) tiles as well, each setting's output is checked
against the default setting's, and the totals are timed again with the best of everything applied (the entries one
would put into LAUNCH_WIDE / TILES_WIDE).  --isolate runs each kernel's sweep in its own process: a setting that
faults loses the process's CUDA context, and then only that kernel's remaining settings.

Writes bench_chunk_tuning.json (+ .md) to --out and prints the summary last.

    python benchmarks/bench_chunk_tuning.py --out /tmp/res
    python benchmarks/bench_chunk_tuning.py --shapes 4,4096,8,256 --sweep-shapes 4,4096,8,256 --tiles --isolate
    python benchmarks/bench_chunk_tuning.py --diag          # per-stage error against float64 at several K, V
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
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

ck.AUTOTUNE = False  # this script sets (num_warps, num_stages) itself through ck.LAUNCH

SHAPES = [(8, 2048, 16, 128), (2, 8192, 16, 128), (1, 32768, 16, 128), (8, 2048, 32, 64), (4, 4096, 8, 256)]
KERNELS = ["bwd_dhu", "fwd_h", "bwd_dqkw", "wy_bwd", "fwd_o", "bwd_dv_local", "wy_fwd"]  # sweep order: largest first
SEQ = {"fwd_h", "bwd_dhu"}
CHUNK_CFGS = [(4, 1), (4, 2), (4, 3), (8, 2)]
# chunk-parallel kernels at K or V > 128 (--tiles): first every (BK, BV) tile at two settings, then more settings at
# the best tile
TILE_CANDS = [(64, 64), (32, 64), (64, 32), (128, 64), (64, 128), (128, 128)]
TILE_CFGS = [(4, 2), (8, 2)]
TILE_CFGS2 = [(4, 1), (4, 3), (8, 1), (8, 3), (16, 2)]
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

    fns = {
        "wy_fwd": lambda: ck._wy_fwd(m, k, v, beta),
        "fwd_h": lambda: ck._fwd_h(seq_meta(), k, w, u, None, False),
        "fwd_o": lambda: ck._fwd_o(m, q, k, v_new, h, scale),
        "bwd_dhu": lambda: ck._bwd_dhu(seq_meta(), q, k, w, do, None, scale, False),
        "bwd_dqkw": lambda: ck._bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale),
        "wy_bwd": lambda: ck._wy_bwd(m, k, v, beta, A, dw, dv_new, dk_part),
    }
    if m.BKs < m.K:  # K > 128: dv_local is its own kernel (and included in bwd_dhu's time)
        fns["bwd_dv_local"] = lambda: ck._bwd_dv_local(m, q, k, do, scale)
    return fns


def totals(q, k, v, beta, do, fn):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v, beta)]

    def fwd():
        with torch.no_grad():
            fn(*xs)

    def fwdbwd():
        fn(*xs)[0].backward(do)

    fwd(), fwdbwd()
    return bench(fwd), bench(fwdbwd)


def diag_stages(K, V, dtype=torch.bfloat16, B=1, T=256, H=2, BT=64, device="cuda", tweak=None):
    """Relative error of every forward intermediate (A, w, u, h, v_new, o, final state) of our kernels against the
    same stage computed in float64 from the same (rounded) inputs: localises a wrong kernel."""
    torch.manual_seed(K * 1000 + V)
    q = F.normalize(torch.randn(B, T, H, K, device=device, dtype=torch.float64), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, K, device=device, dtype=torch.float64), dim=-1).to(dtype)
    v = torch.randn(B, T, H, V, device=device, dtype=torch.float64).to(dtype)
    beta = torch.rand(B, T, H, device=device, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, H, K, V, device=device, dtype=torch.float64).to(dtype)
    scale = K ** -0.5
    m = ck._Meta(q, v, None, BT)
    if tweak is not None:
        tweak(m)
    A, w, u = ck._wy_fwd(m, k, v, beta)
    h, v_new, ht = ck._fwd_h(m, k, w, u, h0, True)
    o = ck._fwd_o(m, q, k, v_new, h, scale)
    qd, kd, vd, bd, S = (x.double() for x in (q, k, v, beta, h0))
    ref = {n: [] for n in ("A", "w", "u", "h", "v_new", "o")}
    NT = T // BT
    for c in range(NT):
        sl = slice(c * BT, (c + 1) * BT)
        kc, vc, qc, bc = (x[:, sl].transpose(1, 2) for x in (kd, vd, qd, bd))  # (B, H, BT, *)
        L = torch.tril(bc[..., None] * (kc @ kc.transpose(-1, -2)), -1)
        Ac = torch.linalg.inv(torch.eye(BT, device=device, dtype=torch.float64) + L)
        wc, uc = Ac @ (bc[..., None] * kc), Ac @ (bc[..., None] * vc)
        vn = uc - wc @ S
        oc = scale * (qc @ S + torch.tril(qc @ kc.transpose(-1, -2)) @ vn)
        ref["A"].append(Ac.transpose(1, 2)), ref["w"].append(wc.transpose(1, 2)), ref["u"].append(uc.transpose(1, 2))
        ref["h"].append(S.clone()), ref["v_new"].append(vn.transpose(1, 2)), ref["o"].append(oc.transpose(1, 2))
        S = S + kc.transpose(-1, -2) @ vn
    ours = {"A": A, "w": w, "u": u, "h": h.view(B, NT, H, K, V), "v_new": v_new, "o": o}
    err = {}
    for n, r in ref.items():
        r = torch.stack(r, 1) if n == "h" else torch.cat(r, 1)
        err[n] = ((ours[n].double() - r).norm() / r.norm()).item()
    err["final"] = ((ht.double() - S).norm() / S.norm()).item()
    return err


def failed(e: Exception) -> str:
    """The cell text for a failed setting; raises _ContextLost when the failure left the CUDA context unusable (an
    illegal access poisons every later launch, so the sweep must stop rather than record more failures)."""
    msg = f"{type(e).__name__}: {str(e)[:160]}"
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as e2:  # noqa: BLE001
        raise _ContextLost(f"{msg} (then: {type(e2).__name__})") from e
    return msg


class _ContextLost(RuntimeError):
    pass


@contextlib.contextmanager
def _tables_restored():
    """Restore chunk.py's launch tables (LAUNCH, LAUNCH_WIDE, TILES, TILES_WIDE, SEQ_BV) on exit."""
    tables = (ck.LAUNCH, ck.LAUNCH_WIDE, ck.TILES, ck.TILES_WIDE)
    saved, seq_bv = [dict(d) for d in tables], ck.SEQ_BV
    try:
        yield
    finally:
        for d, old in zip(tables, saved):
            d.clear(), d.update(old)
        ck.SEQ_BV = seq_bv


def _cfg(name, tile, nw, ns):
    """Set one chunk-parallel kernel's tile and launch settings (the wide tables are cleared for it)."""
    ck.LAUNCH_WIDE.pop(name, None), ck.TILES_WIDE.pop(name, None)
    ck.LAUNCH[name] = (nw, ns)
    ck.TILES[name] = tile


def _max_rel(out, ref) -> float:
    """Largest relative error over the tensors of two stage outputs (tuples with Nones, or tensors)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    errs = [((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
            for a, b in zip(outs, refs) if isinstance(a, torch.Tensor)]
    return max(errs) if errs else 0.0


WRONG = 3e-2  # a setting whose stage output differs more than this from the default setting's is not a candidate


def sweep_tiles(name, fn):
    """Time fn over TILE_CANDS x TILE_CFGS, then TILE_CFGS2 at the best tile, checking each setting's output against
    the default setting's (errs; above WRONG it is not a candidate).  Restores every table afterwards.  A setting
    that loses the CUDA context ends the sweep: the result then names it under "lost"."""
    ref = fn()
    ref = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in (ref if isinstance(ref, tuple) else (ref,)))
    torch.cuda.synchronize()
    times, errs, res = {}, {}, {}

    def one(tile, nw, ns):
        key = f"{tile[0]}x{tile[1]},{nw},{ns}"
        print(f"  try {name} {key}", flush=True)
        _cfg(name, tile, nw, ns)
        try:
            out = fn()
            torch.cuda.synchronize()  # a fault shows up here, attributed to this setting
            errs[key] = _max_rel(out, ref)
            del out
            times[key] = bench(fn, rep=30)
        except _ContextLost:
            raise
        except Exception as e:  # noqa: BLE001 (out of resources etc.)
            times[key] = failed(e)

    def best_of():
        ok = {c: t for c, t in times.items() if isinstance(t, float) and errs.get(c, 1.0) <= WRONG}
        return (min(ok, key=ok.get), ok) if ok else (None, ok)

    with _tables_restored():
        try:
            for tile in TILE_CANDS:
                for nw, ns in TILE_CFGS:
                    one(tile, nw, ns)
            best, _ = best_of()
            if best is not None:
                tile = tuple(int(x) for x in best.split(",")[0].split("x"))
                for nw, ns in TILE_CFGS2:
                    one(tile, nw, ns)
        except _ContextLost as e:
            res["lost"] = str(e)
            times[f"{ck.TILES[name][0]}x{ck.TILES[name][1]},{ck.LAUNCH[name][0]},{ck.LAUNCH[name][1]}"] = "context lost"
    best, ok = best_of()
    res.update({"times": times, "errs": errs, "best": best, "best_ms": ok.get(best)})
    return res


def sweep_launch(name, fn):
    """Time fn over the (num_warps, num_stages) settings (and, for the two walks, the V block SEQ_BV)."""
    cands = SEQ_CFGS if name in SEQ else [(None, nw, ns) for nw, ns in CHUNK_CFGS]
    times = {}
    with _tables_restored():
        ck.LAUNCH_WIDE.pop(name, None)  # the swept setting applies at every shape
        for bv, nw, ns in cands:
            ck.LAUNCH[name] = (nw, ns)
            ck.SEQ_BV = bv
            try:
                fn()
                times[f"{bv},{nw},{ns}"] = bench(fn, rep=30)
            except Exception as e:  # noqa: BLE001 (out of resources etc.)
                times[f"{bv},{nw},{ns}"] = failed(e)
    ok = {c: t for c, t in times.items() if isinstance(t, float)}
    best = min(ok, key=ok.get) if ok else None
    return {"times": times, "best": best, "best_ms": ok.get(best)}


def sweep_in_child(name, spec, args, out):
    """Sweep one kernel at one shape in a fresh process (--only-kernel); returns its sweep entry."""
    child_out = out / "isolated" / name
    cmd = [sys.executable, __file__, "--only-kernel", name, "--sweep-shapes", spec, "--out", str(child_out),
           "--no-fla", "--budget-s", "1e9"] + (["--tiles"] if args.tiles else [])
    rc = subprocess.run(cmd).returncode
    shape = str(tuple(int(x) for x in spec.split(",")))
    try:
        child = json.loads((child_out / "bench_chunk_tuning.json").read_text())
    except (OSError, ValueError):
        child = {}
    entry = child.get("sweep", {}).get(shape, {}).get(name)
    if entry is None:
        entry = {"times": {}, "best": None, "best_ms": None}
    entry["rc"] = rc
    if child.get("error"):
        entry["error"] = child["error"]
    return entry


def tuned_totals(sw, q, k, v, beta, do, fn):
    """Apply the best swept setting of every kernel (one SEQ_BV for both walks: the V block with the least summed
    time) and time fwd and fwd+bwd; returns the totals and the settings as chunk.py table entries."""
    launch, tiles = {}, {}
    for name, r in sw.items():
        if name in SEQ or r["best"] is None:
            continue
        t, nw, ns = r["best"].split(",")
        launch[name], tiles[name] = (int(nw), int(ns)), tuple(int(x) for x in t.split("x"))
    seq_bv, seq_best = None, float("inf")
    for bv in (16, 32, 64) if SEQ & set(sw) else ():  # the walks were not swept: keep the default V block
        tot = 0.0
        for name in SEQ & set(sw):
            ts = [t for c, t in sw[name]["times"].items() if c.startswith(f"{bv},") and isinstance(t, float)]
            tot += min(ts) if ts else float("inf")
        if tot < seq_best:
            seq_bv, seq_best = bv, tot
    for name in SEQ & set(sw):
        ts = {c: t for c, t in sw[name]["times"].items() if c.startswith(f"{seq_bv},") and isinstance(t, float)}
        if ts:
            launch[name] = tuple(int(x) for x in min(ts, key=ts.get).split(",")[1:])
    with _tables_restored():
        ck.LAUNCH.update(launch), ck.LAUNCH_WIDE.update(launch), ck.TILES.update(tiles)
        ck.SEQ_BV = seq_bv
        f, fb = totals(q, k, v, beta, do, fn)
    return {"fwd": f, "fwdbwd": fb, "LAUNCH_WIDE": {n: list(c) for n, c in launch.items()},
            "TILES_WIDE": {n: list(t) for n, t in tiles.items()}, "SEQ_BV": seq_bv}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--sweep-shapes", default="8,2048,16,128;1,32768,16,128")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop sweeping after this many seconds")
    ap.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES))
    ap.add_argument("--no-fla", action="store_true", help="skip the fla totals")
    ap.add_argument("--no-sweep", action="store_true", help="skip the (num_warps, num_stages) sweep")
    ap.add_argument("--diag", action="store_true", help="only: per-stage errors vs float64 at several K, V; exit")
    ap.add_argument("--tiles", action="store_true",
                    help="sweep also the (BK, BV) tiles of the chunk-parallel kernels, then time the totals with the "
                         "best settings applied (as LAUNCH_WIDE / TILES_WIDE / SEQ_BV would)")
    ap.add_argument("--isolate", action="store_true",
                    help="sweep each kernel in its own process: a setting that faults (and so loses the CUDA "
                         "context) ends only that kernel's sweep")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernels to sweep (default: all)")
    ap.add_argument("--only-kernel", default=None, help=argparse.SUPPRESS)  # used by --isolate: sweep only this
    args = ap.parse_args()
    if args.diag:
        for dt in (torch.bfloat16, torch.float32):
            for K, V in ((128, 128), (256, 256), (256, 64), (64, 256), (192, 64)):
                e = diag_stages(K, V, dt)
                print("diag", str(dt)[6:], K, V, {n: f"{x:.1e}" for n, x in e.items()}, flush=True)
        # the same without software pipelining of the chunk-parallel kernels' K/V loops (num_stages=1)
        saved = dict(ck.LAUNCH)
        for name in ("wy_fwd", "fwd_o"):
            ck.LAUNCH[name] = (ck.LAUNCH[name][0], 1)
        for K, V in ((256, 256), (256, 64), (64, 256)):
            e = diag_stages(K, V, torch.bfloat16)
            print("diag stages=1 bfloat16", K, V, {n: f"{x:.1e}" for n, x in e.items()}, flush=True)
        ck.LAUNCH.update(saved)
        # one setting changed at a time at K = V = 256 (bf16), to localise the fault
        variants = {
            "all stages=1": (lambda: ck.LAUNCH.update({n: (w, 1) for n, (w, _) in saved.items()}), None),
            "all warps=8": (lambda: ck.LAUNCH.update({n: (8, s) for n, (_, s) in saved.items()}), None),
            "row-by-row inverse": (lambda: setattr(ck, "BLOCKED_INV", False), None),
            "prec=ieee": (None, lambda m: setattr(m, "prec", "ieee")),
            "BK=32": (None, lambda m: setattr(m, "BK", 32)),
            "BV=32": (None, lambda m: setattr(m, "BV", 32)),
            "BK=BV=128": (None, lambda m: (setattr(m, "BK", 128), setattr(m, "BV", 128))),
        }
        for name, (setup, tweak) in variants.items():
            if setup is not None:
                setup()
            try:
                for K, V in ((256, 256), (128, 128)):
                    e = diag_stages(K, V, torch.bfloat16, tweak=tweak)
                    print(f"diag [{name}] bfloat16", K, V, {n: f"{x:.1e}" for n, x in e.items()}, flush=True)
            except Exception as ex:  # noqa: BLE001 - a variant that does not compile is reported, the rest run
                print(f"diag [{name}] failed: {type(ex).__name__}: {str(ex)[:200]}", flush=True)
            ck.LAUNCH.update(saved)
            ck.BLOCKED_INV = True
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "command": "python benchmarks/bench_chunk_tuning.py " + " ".join(sys.argv[1:]),
           "default_launch": dict(ck.LAUNCH), "breakdown": {}, "sweep": {}, "totals": {}, "tuned": {}}
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
    for spec in ([] if args.only_kernel else args.shapes.split(";")):
        shape = tuple(int(x) for x in spec.split(","))
        q, k, v, beta, do = make(*shape)
        fns = stage_fns(q, k, v, beta, do)
        row = {name: bench(f) for name, f in fns.items()}
        row["seq_bv_heuristic"] = ck._Meta(q, v, None, 64).BVs
        for bv in (16, 32, 64):  # the sequential kernels at each V block
            ck.SEQ_BV = bv
            for name in SEQ:
                row[f"{name}_bv{bv}"] = bench(fns[name])
        ck.SEQ_BV = None
        res["breakdown"][str(shape)] = row
        print("breakdown", shape, {n: round(t, 4) for n, t in row.items()}, f"t={time.time() - t_start:.0f}s", flush=True)
        f0, fb0 = totals(q, k, v, beta, do, ours)
        res["totals"][str(shape)] = {"ours_default": [f0, fb0]}
        if fla_chunk is not None and not args.no_fla:
            f1, fb1 = totals(q, k, v, beta, do, lambda q, k, v, b: fla_chunk(q, k, v, b))
            res["totals"][str(shape)]["fla"] = [f1, fb1]
        print("totals", shape, res["totals"][str(shape)], flush=True)
        save()
        del q, k, v, beta, do, fns
        torch.cuda.empty_cache()

    # 2. sweep
    for spec in ([] if args.no_sweep else args.sweep_shapes.split(";")):
        shape = tuple(int(x) for x in spec.split(","))
        q, k, v, beta, do = make(*shape)
        fns = stage_fns(q, k, v, beta, do)
        sw = res["sweep"][str(shape)] = {}
        lost = False
        for name in [args.only_kernel] if args.only_kernel else [n for n in KERNELS if n in args.kernels.split(",")]:
            if time.time() - t_start > args.budget_s:
                break
            if name not in fns:
                continue
            try:
                if args.isolate:
                    sw[name] = sweep_in_child(name, spec, args, out)
                elif args.tiles and name not in SEQ:
                    sw[name] = sweep_tiles(name, fns[name])
                else:
                    sw[name] = sweep_launch(name, fns[name])
                if "lost" in sw[name]:
                    raise _ContextLost(sw[name]["lost"])
            except _ContextLost as e:
                res["error"] = f"sweep of {name}: CUDA context lost after {e}"
                print(res["error"], flush=True)
                lost = not args.isolate
                if lost:
                    break
            finally:
                save()
            print("sweep", shape, name, "best", sw[name].get("best"), sw[name].get("best_ms"), flush=True)
        if lost:
            break
        if args.tiles and not args.only_kernel and time.time() - t_start < args.budget_s + 60:
            res["tuned"][str(shape)] = tuned_totals(sw, q, k, v, beta, do, ours)
            print("tuned", shape, res["tuned"][str(shape)], flush=True)
            save()
        del q, k, v, beta, do, fns
        torch.cuda.empty_cache()

    if args.only_kernel:
        return
    # summary
    lines = ["| shape | ours fwd | fla fwd | ours fwd+bwd | fla fwd+bwd | ratio fwd+bwd |", "|---|---|---|---|---|---|"]
    for shape, t in res["totals"].items():
        o, f = t["ours_default"], t.get("fla", [float("nan")] * 2)
        lines.append(f"| {shape} | {o[0]:.3f} | {f[0]:.3f} | {o[1]:.3f} | {f[1]:.3f} | {o[1] / f[1]:.2f} |")
    for shape, t in res["tuned"].items():
        f = res["totals"].get(shape, {}).get("fla", [float("nan")] * 2)
        lines.append(f"| {shape} tuned | {t['fwd']:.3f} | {f[0]:.3f} | {t['fwdbwd']:.3f} | {f[1]:.3f} | "
                     f"{t['fwdbwd'] / f[1]:.2f} |")
    (out / "bench_chunk_tuning.md").write_text(res["command"] + "\n\n" + "\n".join(lines) + "\n")
    save()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
