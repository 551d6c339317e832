"""Where does our chunkwise delta-rule kernel spend its time, and which launch settings are best on this GPU?

1. Per-kernel breakdown (do_bench medians, bf16) of the stages of kernels/common (through their public launchers)
   at each shape.
2. Sweep of (num_warps, num_stages) per kernel, and of the V block of the two sequential kernels, at the shapes given
   by --sweep-shapes; prints the best setting per kernel and shape.
3. Totals forward and forward+backward: ours (defaults, then with the best swept settings) vs fla's chunk_delta_rule.

With --tiles the chunk-parallel kernels are swept over (BK, BV) tiles as well, each setting's output is checked
against the default setting's, and the totals are timed again with the best of everything applied (the
kernels.ChunkSettings entries one would make the defaults).  --isolate runs each kernel's sweep in its own process:
a setting that faults loses the process's CUDA context, and then only that kernel's remaining settings.  Every
setting is applied through kernels.chunk_settings.

Writes bench_chunk_tuning.json (+ .md) to --out and prints the summary last.

    python benchmarks/bench_chunk_tuning.py --out DIR
    python benchmarks/bench_chunk_tuning.py --out DIR --shapes 4,4096,8,256 --sweep-shapes 4,4096,8,256 \
        --tiles --isolate

--diag instead writes bench_chunk_tuning_diag.json (+ .md): the error of every forward stage against float64 at
several K, V, with a few settings changed one at a time (it localises a wrong kernel).  It also runs on CPU under
the Triton interpreter (float32 only: the interpreter's bfloat16 dots are not exact):

    python benchmarks/bench_chunk_tuning.py --out DIR --diag
    TRITON_INTERPRET=1 python benchmarks/bench_chunk_tuning.py --out DIR --diag --diag-shapes 32,16 --dtypes float32
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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

from benchmarks.sweep import command_line  # noqa: E402
from kernels import (  # noqa: E402
    ChunkSettings, KernelSettings, chunk_delta_rule, chunk_settings, current_chunk_settings,
)
from kernels.common.chunk_h import bwd_dhu, bwd_dv_local, fwd_h  # noqa: E402
from kernels.common.chunk_o import bwd_dqkw, fwd_o  # noqa: E402
from kernels.common.launch import KERNELS as ALL_KERNELS, ChunkMeta  # noqa: E402
from kernels.common.wy import wy_bwd, wy_fwd  # noqa: E402

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


def meta_of(q, v):
    """ChunkMeta of (q, v) under the settings active when it is called (one per settings object)."""
    metas = {}

    def meta():
        s = current_chunk_settings()
        if s not in metas:
            metas[s] = ChunkMeta(q, v, None, 64, s)
        return metas[s]
    return meta


def stage_fns(q, k, v, beta, do):
    """Closures launching each stage once, under the active settings, on realistic intermediates (computed once)."""
    scale = q.shape[-1] ** -0.5
    meta = meta_of(q, v)
    m = meta()
    A, w, u = wy_fwd(m, k, v, beta)
    h, v_new, _ = fwd_h(m, k, w, u, None, False)
    dv_new, dh, _ = bwd_dhu(m, q, k, w, do, None, scale, False)
    dq, dk_part, dw = bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale)
    fns = {
        "wy_fwd": lambda: wy_fwd(meta(), k, v, beta),
        "fwd_h": lambda: fwd_h(meta(), k, w, u, None, False),
        "fwd_o": lambda: fwd_o(meta(), q, k, v_new, h, scale),
        "bwd_dhu": lambda: bwd_dhu(meta(), q, k, w, do, None, scale, False),
        "bwd_dqkw": lambda: bwd_dqkw(meta(), q, k, v_new, do, h, dh, dv_new, scale),
        "wy_bwd": lambda: wy_bwd(meta(), k, v, beta, A, dw, dv_new, dk_part),
    }
    if m.BKs < m.K:  # K > 128: dv_local is its own kernel (and included in bwd_dhu's time)
        fns["bwd_dv_local"] = lambda: bwd_dv_local(meta(), q, k, do, scale)
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


def diag_stages(K, V, dtype=torch.bfloat16, B=1, T=256, H=2, BT=64, device="cuda"):
    """Relative error of every forward intermediate (A, w, u, h, v_new, o, final state) of our kernels, under the
    active settings, against the same stage computed in float64 from the same (rounded) inputs."""
    torch.manual_seed(K * 1000 + V)
    q = F.normalize(torch.randn(B, T, H, K, device=device, dtype=torch.float64), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, K, device=device, dtype=torch.float64), dim=-1).to(dtype)
    v = torch.randn(B, T, H, V, device=device, dtype=torch.float64).to(dtype)
    beta = torch.rand(B, T, H, device=device, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, H, K, V, device=device, dtype=torch.float64).to(dtype)
    scale = K ** -0.5
    m = ChunkMeta(q, v, None, BT)
    A, w, u = wy_fwd(m, k, v, beta)
    h, v_new, ht = fwd_h(m, k, w, u, h0, True)
    o = fwd_o(m, q, k, v_new, h, scale)
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


def _cfg(name, tile, nw, ns) -> dict:
    """chunk_settings changes giving one kernel this launch setting and tile at every shape (no wide entries)."""
    return {name: KernelSettings(launch=(nw, ns), tile=tile)}


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
    the default setting's (errs; above WRONG it is not a candidate).  A setting that loses the CUDA context ends the
    sweep: the result then names it under "lost"."""
    ref = fn()
    ref = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in (ref if isinstance(ref, tuple) else (ref,)))
    torch.cuda.synchronize()
    times, errs, res = {}, {}, {}
    trying = [None]

    def one(tile, nw, ns):
        key = trying[0] = f"{tile[0]}x{tile[1]},{nw},{ns}"
        print(f"  try {name} {key}", flush=True)
        with chunk_settings(**_cfg(name, tile, nw, ns)):
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
        times[trying[0]] = "context lost"
    best, ok = best_of()
    res.update({"times": times, "errs": errs, "best": best, "best_ms": ok.get(best)})
    return res


def sweep_launch(name, fn):
    """Time fn over the (num_warps, num_stages) settings (and, for the two walks, the state V block seq_bv); the
    swept setting applies at every shape (no wide entry)."""
    cands = SEQ_CFGS if name in SEQ else [(None, nw, ns) for nw, ns in CHUNK_CFGS]
    times = {}
    for bv, nw, ns in cands:
        with chunk_settings(seq_bv=bv, **{name: KernelSettings(launch=(nw, ns))}):
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
    """Apply the best swept setting of every kernel (one seq_bv for both walks: the V block with the least summed
    time) and time fwd and fwd+bwd; returns the totals and the settings as kernels.ChunkSettings fields."""
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
    changes = {n: KernelSettings(launch=c, launch_wide=c, tile=tiles.get(n)) for n, c in launch.items()}
    with chunk_settings(seq_bv=seq_bv, **changes) as tuned:
        f, fb = totals(q, k, v, beta, do, fn)
    return {"fwd": f, "fwdbwd": fb, "settings": {n: dataclasses.asdict(getattr(tuned, n)) for n in changes},
            "seq_bv": seq_bv}


def diag_variants() -> dict:
    """Settings changed one at a time (chunk_settings keyword arguments), to localise a wrong stage."""
    d = ChunkSettings()
    def with_launch(f):  # f applied to every kernel's launch and launch_wide entries
        return {n: dataclasses.replace(ks, launch=f(ks.launch), launch_wide=ks.launch_wide and f(ks.launch_wide))
                for n, ks in ((n, d.kernel(n)) for n in ALL_KERNELS)}

    parallel = [n for n in ALL_KERNELS if n not in SEQ]
    return {
        "defaults": {},
        "all stages=1": with_launch(lambda c: (c.num_warps, 1)),
        "all warps=8": with_launch(lambda c: (8, c.num_stages)),
        "row-by-row inverse": {"blocked_inv": False},
        "tiles 128x128": {n: KernelSettings(tile=(128, 128)) for n in parallel},
        "2-D grids": {"fold_blocks": False},
    }


def run_diag(args, out: Path):
    """Per-stage errors against float64 for every (variant, dtype, K, V); writes bench_chunk_tuning_diag.json/.md."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [tuple(int(x) for x in sp.split(",")) for sp in args.diag_shapes.split(";")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    res = {"command": command_line("bench_chunk_tuning.py", None), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    lines = ["| variant | dtype | K, V | " + " | ".join(DIAG_STAGES) + " |", "|---" * (len(DIAG_STAGES) + 3) + "|"]
    for name, changes in diag_variants().items():
        for dt in dtypes:
            for K, V in shapes:
                row = {"variant": name, "dtype": str(dt)[6:], "K": K, "V": V}
                try:
                    with chunk_settings(**changes):
                        row["err"] = diag_stages(K, V, dt, T=args.diag_T, device=device)
                    cells = [f"{row['err'][n]:.1e}" for n in DIAG_STAGES]
                except Exception as ex:  # noqa: BLE001 - a variant that does not compile is reported, the rest run
                    row["error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
                    cells = [row["error"][:60]] + [""] * (len(DIAG_STAGES) - 1)
                res["rows"].append(row)
                lines.append(f"| {name} | {row['dtype']} | {K}, {V} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    (out / "bench_chunk_tuning_diag.json").write_text(json.dumps(res, indent=1))
    (out / "bench_chunk_tuning_diag.md").write_text(
        f"`{res['command']}`  \n{res['device']}, torch {res['torch']}, triton {res['triton']}\n\n"
        "Relative error of each forward stage against float64 from the same rounded inputs.\n\n"
        + "\n".join(lines) + "\n")


DIAG_STAGES = ("A", "w", "u", "h", "v_new", "o", "final")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for bench_chunk_tuning.json/.md")
    ap.add_argument("--sweep-shapes", default="8,2048,16,128;1,32768,16,128")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop sweeping after this many seconds")
    ap.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES))
    ap.add_argument("--no-fla", action="store_true", help="skip the fla totals")
    ap.add_argument("--no-sweep", action="store_true", help="skip the (num_warps, num_stages) sweep")
    ap.add_argument("--diag", action="store_true",
                    help="only: per-stage errors vs float64 (bench_chunk_tuning_diag.json/.md), then exit")
    ap.add_argument("--diag-shapes", default="128,128;256,256;256,64;64,256;192,64", help="K,V;K,V;... of --diag")
    ap.add_argument("--diag-T", type=int, default=256, 
                    help="tokens of --diag's inputs, a multiple of 64 (B = 1, H = 2)")
    ap.add_argument("--dtypes", default="bfloat16,float32", help="dtypes of --diag")
    ap.add_argument("--tiles", action="store_true",
                    help="sweep also the (BK, BV) tiles of the chunk-parallel kernels, then time the totals with the "
                         "best settings applied")
    ap.add_argument("--isolate", action="store_true",
                    help="sweep each kernel in its own process: a setting that faults (and so loses the CUDA "
                         "context) ends only that kernel's sweep")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernels to sweep (default: all)")
    ap.add_argument("--only-kernel", default=None, help=argparse.SUPPRESS)  # used by --isolate: sweep only this
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with chunk_settings(autotune=False):  # this script chooses the launch settings itself
        if args.diag:
            run_diag(args, out)
        else:
            if not torch.cuda.is_available():
                sys.exit("bench_chunk_tuning.py needs a CUDA GPU (only --diag runs under TRITON_INTERPRET=1 on CPU)")
            run(args, out)


def run(args, out: Path):
    t_start = time.time()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "command": command_line("bench_chunk_tuning.py", None), "default_settings": ChunkSettings(autotune=False).as_dict(),
           "breakdown": {}, "sweep": {}, "totals": {}, "tuned": {}}
    try:
        from fla.ops.delta_rule import chunk_delta_rule as fla_chunk
        import fla
        res["fla"] = fla.__version__
    except Exception as e:  # noqa: BLE001
        fla_chunk = None
        res["fla"] = f"unavailable: {e}"

    def save():
        (out / "bench_chunk_tuning.json").write_text(json.dumps(res, indent=1))

    ours = lambda q, k, v, b: chunk_delta_rule(q, k, v, b)  # noqa: E731
    # 1. breakdown at every shape, both inverse variants for wy_fwd
    for spec in ([] if args.only_kernel else args.shapes.split(";")):
        shape = tuple(int(x) for x in spec.split(","))
        q, k, v, beta, do = make(*shape)
        fns = stage_fns(q, k, v, beta, do)
        row = {name: bench(f) for name, f in fns.items()}
        row["seq_bv_default"] = ChunkMeta(q, v, None, 64).BVs
        for bv in (16, 32, 64):  # the sequential kernels at each V block
            with chunk_settings(seq_bv=bv):
                for name in SEQ:
                    row[f"{name}_bv{bv}"] = bench(fns[name])
        res["breakdown"][str(shape)] = row
        print("breakdown", shape, {n: round(t, 4) for n, t in row.items()}, f"t={time.time() - t_start:.0f}s",
              flush=True)
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
