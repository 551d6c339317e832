"""The fused short convolutions and the chunk delta rule in one autograd function that keeps no conv output.

    q, k, v = short_conv_multi(qkv)          (conv + feature map + per-head L2 norm; v: conv + SiLU)
    o       = chunk_delta_rule(q, k, v, beta)

Chained as two autograd functions, the convolution saves its input (the fused projection, (B, T, 3 H D)) and the delta
rule saves its inputs q, k, v: the same amount again. Here the function saves the projection, beta ((B, T, H), also
when computed inside from logits in the projection) and the delta rule's A (and the chunk states h, V' when
ChunkSettings.keep_states keeps them, the default) only; the backward recomputes q, k, v with the three forward conv
kernels (one read of the projection, one write) before the delta rule's backward, and writes beta's logit gradient
and the zeros of the alignment columns with one kernel. Training path only: no initial or final state.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ..common.launch import current_chunk_settings
from ..common.utils import validate_inputs
from ..delta_rule.chunk import chunk_delta_rule_bwd, chunk_delta_rule_fwd
from ..launch import check_runnable
from .short_conv import _ACT_ID, _validate, short_conv_bwd, short_conv_fwd

__all__ = ["conv_chunk_delta_rule"]


def _convs(qkv, ws, acts, norm_dims, pos):
    outs, c0 = [], 0
    for w, act, nd in zip(ws, acts, norm_dims):
        outs.append(short_conv_fwd(qkv[..., c0:c0 + w.shape[0]], w, act, nd, pos))
        c0 += w.shape[0]
    return outs


@triton.jit
def _beta_logit_grad_kernel(dqkv, dbeta, beta, n_rows, row_stride, col0, H, W,
                            BR: tl.constexpr, BW: tl.constexpr):
    """dqkv[:, col0:col0 + W] = [dbeta * beta * (1 - beta), zeros]: the gradient of beta's H logit columns
    (beta = sigmoid(logits)) and of the W - H alignment columns after them, in one pass."""
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    o_c = tl.arange(0, BW)
    m_r = o_r < n_rows
    m_h = m_r[:, None] & (o_c < H)[None, :]
    o_bh = o_r[:, None].to(tl.int64) * H + o_c[None, :]
    b_b = tl.load(beta + o_bh, mask=m_h, other=0.).to(tl.float32)
    b_g = tl.load(dbeta + o_bh, mask=m_h, other=0.).to(tl.float32) * b_b * (1. - b_b)
    tl.store(dqkv + o_r[:, None].to(tl.int64) * row_stride + col0 + o_c[None, :],
             b_g.to(dqkv.dtype.element_ty), mask=m_r[:, None] & (o_c < W)[None, :])


def _beta_logit_grad(dqkv: torch.Tensor, dbeta: torch.Tensor, beta: torch.Tensor, col0: int, H: int) -> None:
    """Write beta's logit gradient (and zeros over the padding columns) into dqkv's columns from col0 on."""
    B, T, width = dqkv.shape
    n, W = B * T, width - col0
    BW = triton.next_power_of_2(W)
    BR = max(1, min(128, 4096 // BW))
    _beta_logit_grad_kernel[(triton.cdiv(n, BR),)](dqkv, dbeta.contiguous(), beta, n, width, col0, H, W, BR=BR, BW=BW)


class ConvChunkDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, beta, pos, cu_seqlens, acts, norm_dims, H, scale, chunk_size, settings, *weights):
        B, T, _ = qkv.shape
        ws = [wt.reshape(wt.shape[0], -1).contiguous() for wt in weights]
        q, k, v = (t.view(B, T, H, -1) for t in _convs(qkv, ws, acts, norm_dims, pos))
        ctx.beta_in_qkv = beta is None
        d_conv = sum(w.shape[0] for w in ws)
        if beta is None:  # the H columns after the conv channels are beta's logits
            beta = torch.sigmoid(qkv[..., d_conv:d_conv + H]).contiguous()
        o, _, A, h, v_new = chunk_delta_rule_fwd(q, k, v, beta, scale, None, False, cu_seqlens, chunk_size, settings)
        if not settings.keeps_states(q.shape[-1]):
            h = v_new = None
        ctx.save_for_backward(qkv, beta, pos, cu_seqlens, A, h, v_new, *ws)  # beta: (B, T, H), small
        ctx.meta = (acts, norm_dims, H, scale, chunk_size, settings, [wt.shape for wt in weights])
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, beta, pos, cu_seqlens, A, h, v_new, *ws = ctx.saved_tensors
        acts, norm_dims, H, scale, chunk_size, settings, shapes = ctx.meta
        B, T, _ = qkv.shape
        q, k, v = (t.view(B, T, H, -1) for t in _convs(qkv, ws, acts, norm_dims, pos))  # recomputed
        d_conv = sum(w.shape[0] for w in ws)
        dq, dk, dv, dbeta, _ = chunk_delta_rule_bwd(q, k, v, beta, A, scale, None, do.contiguous(), None,
                                                    cu_seqlens, chunk_size, settings, h, v_new)
        dqkv = torch.empty_like(qkv)
        dws, c0 = [], 0
        for w, g, act, nd, shape in zip(ws, (dq, dk, dv), acts, norm_dims, shapes):
            D = w.shape[0]
            dws.append(short_conv_bwd(qkv[..., c0:c0 + D], w, g.reshape(B, T, D), act, nd, pos, dqkv[..., c0:c0 + D])
                       .view(shape).to(w.dtype))
            c0 += D
        if ctx.beta_in_qkv:  # beta's logits, then the alignment padding (zero gradient)
            _beta_logit_grad(dqkv, dbeta, beta, d_conv, H)
            dbeta = None
        return (dqkv, dbeta, None, None, None, None, None, None, None, None, *dws)


def conv_chunk_delta_rule(
    qkv: torch.Tensor,
    beta: Optional[torch.Tensor],
    weights: Sequence[torch.Tensor],
    activations: Sequence[str],
    norm_dims: Sequence[Optional[int]],
    num_heads: int,
    cu_seqlens: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """``chunk_delta_rule(*short_conv_multi(qkv, weights, activations, norm_dims), beta)`` keeping no conv output.

    Args:
        qkv: (B, T, H K + H K + H V [+ H + P]) the fused q/k/v projection, bfloat16, float16 or float32; with
            ``beta=None`` the H columns after the conv channels are beta's logits (beta = sigmoid of them, computed
            inside), and any P columns after them are padding, ignored (zero gradient): a row of a width divisible
            by 16 lets the conv kernels use vectorised loads ("Aligned rows" in kernels/README.md).
        beta: (B, T, H) in qkv's dtype, or None (see qkv).
        weights: the three conv weights, (H K, W) / (H K, W) / (H V, W) (or (D, 1, W)).
        activations, norm_dims: per part, as in :func:`kernels.conv.short_conv_multi` (the model: q, k
            ``(act, K)``, v ``("silu", None)``).
        num_heads: H.
        cu_seqlens: optional (N + 1,) offsets packing N sequences into B = 1.
        scale: output scale, default K ** -0.5.  chunk_size: 16, 32 or 64.

    Returns:
        o: (B, T, H, V) in qkv's dtype.  Gradients flow to qkv, beta and the three weights.
    """
    if len(weights) != 3:
        raise ValueError(f"conv_chunk_delta_rule: three conv weights (q, k, v), got {len(weights)}")
    if qkv.dim() != 3:
        raise ValueError(f"conv_chunk_delta_rule: qkv must be (B, T, D), got shape {tuple(qkv.shape)}")
    B, T, width = qkv.shape
    d_conv = sum(w.shape[0] for w in weights)
    if beta is None and width < d_conv + num_heads:
        raise ValueError(f"conv_chunk_delta_rule: with beta=None qkv needs the {d_conv} conv channels and H={num_heads} "
                         f"beta logits, got width {width}")
    x = qkv if beta is not None else qkv[..., :d_conv]  # the conv channels
    pos = _validate(x, weights, activations, norm_dims, cu_seqlens)
    beta_like = beta if beta is not None else qkv.new_empty(()).expand(B, T, num_heads)
    Dq, Dk, Dv = (w.shape[0] for w in weights)
    if Dq != Dk or Dq % num_heads or Dv % num_heads:
        raise ValueError(f"conv_chunk_delta_rule: q and k widths must match and H={num_heads} must divide them and "
                         f"v's, got {Dq}, {Dk}, {Dv}")
    K, V = Dq // num_heads, Dv // num_heads
    shape_q, shape_v = (B, T, num_heads, K), (B, T, num_heads, V)
    q_like, v_like = qkv.new_empty(()).expand(*shape_q), qkv.new_empty(()).expand(*shape_v)  # shapes, no data
    validate_inputs(q_like, q_like, v_like, beta_like, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_runnable("conv_chunk_delta_rule", qkv, beta, *weights)
    scale = K ** -0.5 if scale is None else float(scale)
    beta = None if beta is None else beta.contiguous()
    cu_seqlens = None if cu_seqlens is None else cu_seqlens.contiguous()
    return ConvChunkDeltaRuleFunction.apply(
        qkv.contiguous(), beta, pos, cu_seqlens, tuple(_ACT_ID[a] for a in activations), tuple(norm_dims),
        int(num_heads), scale, int(chunk_size), current_chunk_settings(), *weights)
