"""Question: how many registers does each chunk kernel of the delta rule take on Hopper, and does it spill?

Runs on any machine, GPU or not.  Two steps, each in its own process:

1. record: ``chunk_delta_rule`` forward and backward at (B, T, H, K = V = D) under the Triton interpreter (the
   values are not used), with ``kernels.common.launch.launch`` wrapped to write down each stage's kernel, argument
   types, constexprs and the launch setting that ``ChunkSettings`` picks for it on a GPU of ``--sms`` SMs (the
   state walks take their ``launch_small`` setting when their grid has at most one program per SM);
2. compile: each recorded kernel through Triton's real pipeline for sm_90 (the ptxas that ships with Triton), and
   read its registers per thread and its spill (stack) bytes per thread from the cubin (``cuobjdump -res-usage``).

A kernel at 255 registers with stack bytes spills to local memory: on a latency-bound kernel that is time.  The
numbers are this machine's Triton version's (see the md); another Triton allocates differently.  ``--launch
NAME=WARPS,STAGES`` compiles a stage with another setting (the setting a sweep would time).

    python benchmarks/kernel_resources.py --out benchmarks/results --dims 128 256 --shape 1,16384,8
    python benchmarks/kernel_resources.py --out DIR --dims 128 --launch bwd_dqkw=8,2 wy_bwd=8,2

Writes kernel_resources.md and kernel_resources.json (command, Triton version, one row per (D, stage)).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sweep import command_line  # noqa: E402

NAME = "kernel_resources"
TYPES = {"torch.bfloat16": "*bf16", "torch.float16": "*fp16", "torch.float32": "*fp32", "torch.int32": "*i32",
         "torch.int64": "*i64"}


def record(D: int, B: int, T: int, H: int, dtype: str, sms: int) -> list[dict]:
    """Step 1, under TRITON_INTERPRET=1: every stage launch of one forward + backward (first call per stage)."""
    import math

    import torch

    import kernels
    import kernels.common.launch as L

    real, seen = L.launch, {}

    def launch(settings, name, kernel, grid, *args, **consts):
        small = settings.kernel(name).launch_small is not None and math.prod(grid) <= sms
        cfg = settings.launch_for(name, consts["K"], consts["V"], small)
        sig = [TYPES[str(a.dtype)] if isinstance(a, torch.Tensor) else None if a is None
               else "i32" if isinstance(a, int) else "fp32" for a in args]
        seen.setdefault(name, {"stage": name, "module": kernel.fn.__module__, "kernel": kernel.fn.__name__,
                               "args": sig, "constexprs": consts, "num_warps": cfg.num_warps,
                               "num_stages": cfg.num_stages, "grid": list(grid)})
        return real(settings, name, kernel, grid, *args, **consts)

    for mod in list(sys.modules.values()):  # the stages call the name each module imported
        if mod is not None and getattr(mod, "launch", None) is real:
            mod.launch = launch
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(dt).requires_grad_() for _ in range(3))
    beta = torch.rand(B, T, H, generator=g).to(dt).requires_grad_()
    o, _ = kernels.chunk_delta_rule(q, k, v, beta)
    o.float().sum().backward()
    return list(seen.values())


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_one(rec: dict, num_warps: int, num_stages: int) -> dict:
    """Step 2, without the interpreter: compile a recorded stage for sm_90; registers and spill bytes per thread."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(rec["module"]), rec["kernel"])
    consts = dict(rec["constexprs"])
    runtime = [a for a in fn.arg_names if a not in consts]
    sig = {}
    for name, t in zip(runtime, rec["args"]):
        sig[name] = "constexpr" if t is None else t
        if t is None:
            consts[name] = None
    sig.update({a: "constexpr" for a in fn.arg_names if a not in sig})
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(k.asm["cubin"])
        out = subprocess.run([_cuobjdump(), "-res-usage", str(path)], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    if m is None:
        raise RuntimeError(f"cuobjdump gave no resource usage for {rec['kernel']}: {out[:300]}")
    return {"registers": int(m.group(1)), "spill_bytes": int(m.group(2))}


def _child(argv: list[str], env_interpret: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if env_interpret:
        env["TRITON_INTERPRET"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"kernel_resources {argv[0]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def parse_launch(items: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for item in items:
        try:
            name, setting = item.split("=")
            w, s = (int(x) for x in setting.split(","))
        except ValueError:
            raise SystemExit(f"--launch takes NAME=WARPS,STAGES (e.g. bwd_dqkw=8,2), got {item!r}") from None
        out[name] = (w, s)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_record", "_compile"):  # the two child steps
        if argv[0] == "_record":
            D, B, T, H, sms = (int(x) for x in argv[1:6])
            print(json.dumps(record(D, B, T, H, argv[6], sms)))
        else:
            rec, (w, s) = json.loads(argv[1]), (int(argv[2]), int(argv[3]))
            print(json.dumps(compile_one(rec, w, s)))
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256], help="K = V of each row group")
    p.add_argument("--shape", default="1,16384,8", help="B,T,H: sets the walks' grids (launch_small or not)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--sms", type=int, default=132, help="SMs of the GPU the settings are picked for (H100/H200; "
                   "the interpreter's own count is 132 too)")
    p.add_argument("--launch", nargs="*", default=[], help="NAME=WARPS,STAGES: compile that stage with this instead")
    a = p.parse_args(argv)
    try:
        B, T, H = (int(x) for x in a.shape.split(","))
    except ValueError:
        raise SystemExit(f"--shape takes B,T,H, got {a.shape!r}") from None
    overrides = parse_launch(a.launch)
    import triton

    rows = []
    for D in a.dims:
        # the interpreter runs every token in Python: record at 128 tokens; no constexpr depends on T, and the walks'
        # grids (which pick launch_small and the V block) are (B H, V blocks), not T
        recs = json.loads(_child(["_record", str(D), str(B), str(min(T, 128)), str(H), str(a.sms), a.dtype], True))
        for rec in recs:
            w, s = overrides.get(rec["stage"], (rec["num_warps"], rec["num_stages"]))
            res = json.loads(_child(["_compile", json.dumps(rec), str(w), str(s)], False))
            rows.append({"D": D, "stage": rec["stage"], "kernel": rec["kernel"], "num_warps": w, "num_stages": s,
                         "default": (w, s) == (rec["num_warps"], rec["num_stages"]), **res})
            print(f"D={D} {rec['stage']}: {w} warps, {s} stages: {res['registers']} registers, "
                  f"{res['spill_bytes']} spill bytes", flush=True)
    meta = {"command": command_line(f"{NAME}.py", argv), "triton": triton.__version__, "target": "sm_90",
            "shape": a.shape, "dtype": a.dtype, "sms": a.sms}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{NAME}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# {NAME}: registers and spills of the chunk kernels on sm_90", "", f"    {meta['command']}", "",
          f"Triton {meta['triton']} (its own ptxas), {a.dtype}, launch settings as ChunkSettings picks them at "
          f"(B, T, H) = ({a.shape}) on {a.sms} SMs" + (" except where marked" if overrides else "") + ". Registers "
          "depend on the Triton version; 255 with spill bytes means the kernel keeps part of its state in local "
          "memory.", "",
          "| D | stage | kernel | warps, stages | registers / thread | spill bytes / thread |", "|---|---|---|---|---|---|"]
    md += [f"| {r['D']} | {r['stage']} | `{r['kernel']}` | {r['num_warps']}, {r['num_stages']}"
           f"{'' if r['default'] else ' (--launch)'} | {r['registers']} | {r['spill_bytes']} |" for r in rows]
    (a.out / f"{NAME}.md").write_text("\n".join(md) + "\n")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
