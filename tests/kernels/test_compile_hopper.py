"""Kernels compile for Hopper (sm_90) on a machine without a GPU.

The CPU tests run the kernels under TRITON_INTERPRET=1, which executes their Python and accepts code the compiler
rejects (a loop-carried variable whose type changes, say). Here a fresh process, without the interpreter, lowers
them through Triton's real pipeline to a cubin (Triton ships ptxas), so such errors surface before a GPU run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

SCRIPT = textwrap.dedent('''
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import kernels.mamba.scan as sc  # the Mamba backward's three kernels; the fused conv's beta-gradient kernel

    HALF = {"x", "dt", "Bm", "Cm", "z", "dout", "dx", "ddt", "dz"}
    INTS = {"cu_seqlens", "chunk_offsets"}

    def compile_for_hopper(kernel, consts, scalars, num_warps):
        sig = {a: ("constexpr" if a in consts else "i32" if a in scalars else "*bf16" if a in HALF
                   else "*i32" if a in INTS else "*fp32") for a in kernel.arg_names}
        src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

    for varlen in (False, True):
        for z in (False, True):
            flags = dict(BT=16, BD=8, BN=16, HAS_Z=z, IS_VARLEN=varlen, HAS_DT_BIAS=True, DT_SOFTPLUS=True)
            compile_for_hopper(sc._selective_scan_bwd_walk_kernel, {**flags, "USE_DHT": True, "STORE_DH0": True},
                               {"T", "D", "N"}, 4)
            compile_for_hopper(sc._selective_scan_bwd_chunks_kernel, {**flags, "G": 4, "LOG_S": 2, "HAS_D": True},
                               {"T", "D", "N", "TOTAL", "S"}, 4)
            compile_for_hopper(sc._selective_scan_bwd_kernel, {**flags, "HAS_D": True, "USE_DHT": True,
                                                               "STORE_DH0": True}, {"T", "D", "N", "TOTAL"}, 4)
    import kernels.conv.delta_rule as cdr
    for dt in ("*bf16", "*fp32"):
        sig = {"dqkv": dt, "dbeta": "*fp32", "beta": dt, "n_rows": "i32", "row_stride": "i32", "col0": "i32",
               "H": "i32", "W": "i32", "BR": "constexpr", "BW": "constexpr"}
        triton.compile(ASTSource(fn=cdr._beta_logit_grad_kernel, signature=sig, constexprs={"BR": 256, "BW": 16}),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    import kernels.common.recurrent as rec  # the decayed ops' shared decoding kernel
    sig = {a: "*bf16" for a in ("q", "k", "v", "beta", "o")}
    sig.update({"g": "*fp32", "gk": "*fp32", "e": "*fp32", "h0": "*fp32", "ht": "*fp32", "cu_seqlens": "*i32",
                "scale": "fp32", "T": "i32"})
    # GDN, retention, GLA, the delta rule's forward (errors stored)
    for flags in ((True, False, True, False), (True, False, False, False), (False, True, False, False),
                  (False, False, True, True)):
        consts = dict(H=4, K=128, V=128, BK=128, BV=8, USE_G=flags[0], USE_GK=flags[1], USE_BETA=flags[2],
                      USE_H0=True, STORE_FINAL=True, IS_VARLEN=True, STORE_ERR=flags[3])
        src = ASTSource(fn=rec.fused_recurrent_fwd_kernel, signature={**sig, **dict.fromkeys(consts, "constexpr")},
                        constexprs=consts)
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    print("compiled")
''')


def test_new_kernels_compile_for_sm90():
    try:
        import triton.backends.nvidia  # noqa: F401  (the CUDA backend and its ptxas ship with the triton wheel)
    except ImportError:
        pytest.skip("this triton has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
