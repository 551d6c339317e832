"""SwiGLU's tail ``y = (silu(g) * u) @ W_down^T`` that keeps only g and u for the backward.

Plain autograd keeps g, silu(g), u and the product h = silu(g) * u (the down projection's input): four (N, I)
activations per layer.  Here the autograd function saves g and u alone; the backward recomputes h for
``dW = dy^T h`` and runs one elementwise kernel for ``dg = dh * u * silu'(g)``, ``du = dh * silu(g)``.

Kernels: ``_swiglu_fwd_kernel`` (h from g, u) and ``_swiglu_bwd_kernel`` (h, dg, du from g, u, dh), flat blocks of
``BLOCK`` elements.  Matmuls run in g's dtype with the weight cast to it, as autocast would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..launch import check_runnable

__all__ = ["swiglu_linear"]

BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(g, u, h, n, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    b_u = tl.load(u + o, mask=m, other=0.).to(tl.float32)
    tl.store(h + o, (b_g * tl.sigmoid(b_g) * b_u).to(h.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd_kernel(g, u, dh, h, dg, du, n, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    b_u = tl.load(u + o, mask=m, other=0.).to(tl.float32)
    b_dh = tl.load(dh + o, mask=m, other=0.).to(tl.float32)
    b_s = tl.sigmoid(b_g)
    b_a = b_g * b_s  # silu(g)
    tl.store(h + o, (b_a * b_u).to(h.dtype.element_ty), mask=m)
    tl.store(du + o, (b_dh * b_a).to(du.dtype.element_ty), mask=m)
    tl.store(dg + o, (b_dh * b_u * b_s * (1. + b_g * (1. - b_s))).to(dg.dtype.element_ty), mask=m)


class SwiGLULinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u, weight):
        h = torch.empty_like(g)
        n = g.numel()
        _swiglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, h, n, BLOCK=BLOCK)
        ctx.save_for_backward(g, u, weight)
        with torch.autocast(g.device.type, enabled=False):  # in g's dtype, as documented
            return F.linear(h, weight.to(g.dtype))

    @staticmethod
    def backward(ctx, dy):
        g, u, weight = ctx.saved_tensors
        w = weight.to(g.dtype)
        dy = dy.to(g.dtype).contiguous()
        dh = dy @ w  # (..., I)
        h, dg, du = torch.empty_like(g), torch.empty_like(g), torch.empty_like(u)
        n = g.numel()
        _swiglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, dh, h, dg, du, n, BLOCK=BLOCK)
        dw = dy.reshape(-1, dy.shape[-1]).t() @ h.reshape(-1, h.shape[-1])  # (C, I)
        return dg, du, dw.to(weight.dtype)


def swiglu_linear(g: torch.Tensor, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(silu(g) * u) @ weight^T`` saving only g and u (Triton elementwise, torch matmuls).

    Args:
        g, u: (..., I) gate and up projections, one dtype among bfloat16, float16, float32 (CUDA, or CPU under
            ``TRITON_INTERPRET=1``); made contiguous.
        weight: (C, I) down projection (e.g. float32 master weights; cast to g's dtype for the matmuls).

    Returns:
        (..., C) in g's dtype.

    Example::

        >>> y = swiglu_linear(mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj.weight)
    """
    if g.shape != u.shape or g.dim() < 1:
        raise ValueError(f"swiglu_linear: g and u must have one shape (..., I), got {tuple(g.shape)} and "
                         f"{tuple(u.shape)}")
    if g.dtype not in (torch.bfloat16, torch.float16, torch.float32) or u.dtype != g.dtype:
        raise ValueError(f"swiglu_linear: g and u must share a dtype among bfloat16, float16, float32, got {g.dtype} "
                         f"and {u.dtype}")
    if weight.dim() != 2 or weight.shape[1] != g.shape[-1]:
        raise ValueError(f"swiglu_linear: weight must be (C, {g.shape[-1]}), got {tuple(weight.shape)}")
    if u.device != g.device or weight.device != g.device:
        raise ValueError(f"swiglu_linear: g, u, weight must share a device, got {g.device}, {u.device}, "
                         f"{weight.device}")
    check_runnable("swiglu_linear", g, u)
    return SwiGLULinearFunction.apply(g.contiguous(), u.contiguous(), weight)
