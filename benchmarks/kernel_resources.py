"""Question: how many registers does each Triton kernel of an op take on Hopper, and does it spill?

Runs on any machine, GPU or not.  Two steps, each in its own process:

1. record: one forward and backward of the op (``--ops``: the chunk kernels of the delta rule, Gated DeltaNet,
   retention / simple GLA and GLA at (B, T, H, K = V = D); Mamba's scan with D channels and 16 states; the short
   convolutions of H heads of D) under the Triton interpreter (the values are not used), with every kernel launch
   written down: its argument types, constexprs, and the warps and stages it was launched with.  The launch settings
   are the ones picked for a GPU of 132 SMs (the interpreter reports that count); the walks' grids depend on B and
   H, not T, so the op runs 128 tokens whatever ``--shape`` says;
2. compile: each recorded kernel through Triton's real pipeline for sm_90 (the ptxas that ships with Triton), with
   the 16-byte alignment the JIT would see, and read its registers per thread and its spill (stack) bytes per
   thread from the cubin (``cuobjdump -res-usage``).

A kernel at 255 registers with stack bytes spills to local memory: on a latency-bound kernel that is time.  The
numbers are this machine's Triton version's (see the md); another Triton allocates differently.  ``--launch
KERNEL=WARPS,STAGES`` compiles that kernel with another setting (the setting a sweep would time).

    python benchmarks/kernel_resources.py --out benchmarks/results --ops delta_rule gated_delta_rule mamba_scan \\
        --dims 128 256 --shape 1,16384,8
    python benchmarks/kernel_resources.py --out DIR --dims 128 --launch bwd_dqkw_kernel=8,2 wy_bwd_kernel=8,2

Writes kernel_resources.md and kernel_resources.json (command, Triton version, one row per (op, D, kernel)).
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


OPS = ("delta_rule", "gated_delta_rule", "simple_gla", "gla", "mamba_scan", "short_conv")


def _run_op(op: str, D: int, B: int, T: int, H: int, dtype) -> None:
    """One forward and backward of ``op`` with (B, T, H, D) inputs (values unused: only the launches count)."""
    import torch
    import torch.nn.functional as F

    import kernels

    g = torch.Generator().manual_seed(0)

    def r(*shape, fn=lambda t: t):
        return fn(torch.randn(*shape, generator=g)).to(dtype).requires_grad_()

    if op == "mamba_scan":  # D channels, N = 16 states
        x, dt, z = r(B, T, D), r(B, T, D), r(B, T, D)
        A = (-torch.rand(D, 16, generator=g) - 0.5).requires_grad_()
        Bm, Cm = r(B, T, 16), r(B, T, 16)
        from kernels.mamba import selective_scan

        out = selective_scan(x, dt, A, Bm, Cm, D=torch.ones(D, requires_grad=True), z=z, dt_softplus=True,
                             check_A_sign=False)[0]
    elif op == "short_conv":  # the layer's three parts, H heads of D
        x = r(B, T, 3 * H * D)
        ws = [torch.randn(H * D, 4, generator=g).requires_grad_() for _ in range(3)]
        from kernels.conv import short_conv_multi

        out = torch.cat(short_conv_multi(x, ws, ["silu"] * 3, [D, D, None]), -1)
    else:
        q, k, v = r(B, T, H, D), r(B, T, H, D, fn=lambda t: F.normalize(t, dim=-1)), r(B, T, H, D)
        if op == "delta_rule":
            out = kernels.chunk_delta_rule(q, k, v, r(B, T, H, fn=torch.sigmoid))[0]
        elif op == "gated_delta_rule":
            gate = F.logsigmoid(torch.randn(B, T, H, generator=g)).requires_grad_()
            out = kernels.chunk_gated_delta_rule(q, k, v, gate, r(B, T, H, fn=torch.sigmoid))[0]
        elif op == "simple_gla":
            out = kernels.chunk_simple_gla(q, k, v, F.logsigmoid(torch.randn(B, T, H, generator=g)))[0]
        else:  # gla: a decay per key channel
            out = kernels.chunk_gla(q, k, v, F.logsigmoid(torch.randn(B, T, H, D, generator=g)).requires_grad_())[0]
    out.float().sum().backward()


def record(op: str, D: int, B: int, T: int, H: int, dtype: str) -> list[dict]:
    """Step 1, under TRITON_INTERPRET=1: each kernel launched by one forward + backward of ``op`` (its first
    launch), with its argument types, constexprs and the warps and stages it was launched with (the launch settings
    are picked as on a GPU of 132 SMs: the interpreter reports that count)."""
    import inspect

    import torch
    from triton.runtime.interpreter import InterpretedFunction

    real, seen = InterpretedFunction.run, {}

    def run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        bound = dict(zip(self.arg_names, args))
        bound.update({k: v for k, v in kwargs.items() if k in params})
        consts, types, attrs = {}, {}, []
        for i, name in enumerate(self.arg_names):
            val = bound.get(name, params[name].default)
            if type(val).__name__ == "constexpr":  # a default written as tl.constexpr(...)
                val = val.value
            if "constexpr" in str(params[name].annotation) or val is None:
                consts[name] = None if val is inspect.Parameter.empty else val
            elif isinstance(val, torch.Tensor):
                types[name] = TYPES[str(val.dtype)]
                attrs.append(i)  # a torch allocation: 16-byte aligned, as the JIT would see it
            elif isinstance(val, bool):
                types[name] = "i1"
            elif isinstance(val, int):
                if val == 1:  # the JIT specialises 1 into a constant
                    consts[name] = 1
                else:
                    types[name] = "i64" if abs(val) >= 2 ** 31 else "i32"
                    if val % 16 == 0:
                        attrs.append(i)
            else:
                types[name] = "fp32"
        key = self.fn.__name__
        if key not in seen:
            seen[key] = {"kernel": key, "module": self.fn.__module__, "types": types, "constexprs": consts,
                         "aligned": attrs, "num_warps": kwargs.get("num_warps", 4),
                         "num_stages": kwargs.get("num_stages", 3)}
        return real(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        _run_op(op, D, B, T, H, getattr(torch, dtype))
    finally:
        InterpretedFunction.run = real
    return list(seen.values())


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_one(rec: dict, num_warps: int, num_stages: int) -> dict:
    """Step 2, without the interpreter: compile a recorded kernel for sm_90 (with the alignment the JIT would
    assume); registers and spill bytes per thread."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    fn = getattr(importlib.import_module(rec["module"]), rec["kernel"])
    target = GPUTarget("cuda", 90, 32)
    sig = {a: rec["types"].get(a, "constexpr") for a in fn.arg_names}
    aligned = make_backend(target).parse_attr("D")
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(rec["constexprs"]),
                    attrs={(i,): aligned for i in rec["aligned"]})
    k = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": num_stages})
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
            raise SystemExit(f"--launch takes KERNEL=WARPS,STAGES (e.g. bwd_dqkw_kernel=8,2), got {item!r}") from None
        out[name] = (w, s)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_record", "_compile"):  # the two child steps
        if argv[0] == "_record":
            op, (D, B, T, H) = argv[1], (int(x) for x in argv[2:6])
            print(json.dumps(record(op, D, B, T, H, argv[6])))
        else:
            rec, (w, s) = json.loads(argv[1]), (int(argv[2]), int(argv[3]))
            print(json.dumps(compile_one(rec, w, s)))
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ops", nargs="+", default=["delta_rule"], choices=OPS)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256], help="D: K = V, Mamba's channels")
    p.add_argument("--shape", default="1,16384,8", help="B,T,H: sets the walks' grids (launch_small or not)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--launch", nargs="*", default=[], help="KERNEL=WARPS,STAGES: compile that kernel with this")
    a = p.parse_args(argv)
    try:
        B, T, H = (int(x) for x in a.shape.split(","))
    except ValueError:
        raise SystemExit(f"--shape takes B,T,H, got {a.shape!r}") from None
    overrides = parse_launch(a.launch)
    import triton

    rows = []
    for op in a.ops:
        for D in a.dims:
            recs = json.loads(_child(["_record", op, str(D), str(B), str(min(T, 128)), str(H), a.dtype], True))
            for rec in recs:
                w, s = overrides.get(rec["kernel"], (rec["num_warps"], rec["num_stages"]))
                res = json.loads(_child(["_compile", json.dumps(rec), str(w), str(s)], False))
                rows.append({"op": op, "D": D, "kernel": rec["kernel"], "num_warps": w, "num_stages": s,
                             "default": (w, s) == (rec["num_warps"], rec["num_stages"]), **res})
                print(f"{op} D={D} {rec['kernel']}: {w} warps, {s} stages: {res['registers']} registers, "
                      f"{res['spill_bytes']} spill bytes", flush=True)
    meta = {"command": command_line(f"{NAME}.py", argv), "triton": triton.__version__, "target": "sm_90",
            "shape": a.shape, "dtype": a.dtype}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{NAME}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# {NAME}: registers and spills of the Triton kernels on sm_90", "", f"    {meta['command']}", "",
          f"Triton {meta['triton']} (its own ptxas), {a.dtype}, launch settings as picked at (B, T, H) = "
          f"({a.shape}) on 132 SMs" + (" except where marked" if overrides else "") + ". Registers depend on the "
          "Triton version; 255 with spill bytes means the kernel keeps part of its state in local memory.", "",
          "| op | D | kernel | warps, stages | registers / thread | spill bytes / thread |", "|---|---|---|---|---|---|"]
    md += [f"| {r['op']} | {r['D']} | `{r['kernel']}` | {r['num_warps']}, {r['num_stages']}"
           f"{'' if r['default'] else ' (--launch)'} | {r['registers']} | {r['spill_bytes']} |" for r in rows]
    (a.out / f"{NAME}.md").write_text("\n".join(md) + "\n")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
