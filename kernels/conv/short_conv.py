"""Depthwise causal short convolution with the activation and the per-head L2 norm fused, on (B, T, D) directly.

    y_t = sum_{j<W} w[:, j] * x_{t - (W-1) + j},   a_t = act(y_t),   o_t = a_t / max(||a_t||, eps) (per head)

The plain layer runs ``F.conv1d`` on a transposed, zero-padded copy, then the activation and ``F.normalize`` as
separate kernels, each writing an activation that autograd keeps.  Here one kernel reads x once and writes o once,
and the autograd function saves only x: the backward recomputes y, a and the norms from x.

Kernels:
  ``_short_conv_fwd_kernel``: one program per (token block, channel group, batch row) -> o.
  ``_short_conv_bwd_dy_kernel``: recomputes the forward of its block, back through norm and activation -> dy
      (float32, transient).
  ``_short_conv_bwd_dx_kernel``: dx_t = sum_j w[:, j] dy_{t + (W-1) - j} (the convolution transposed), and the
      weight gradient dw[:, j] = sum_t dy_{t + (W-1) - j} x_t of its span of token blocks from the same loads of dy.
With the norm, a channel group is one head (``norm_dim`` channels), so the norm's sum stays inside a program.
Packed sequences (``cu_seqlens``, B = 1) pass each token's position inside its sequence, so taps that would reach
across a sequence start are masked out, in the forward and in the transposed convolution alike.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..common.launch import sm_count
from ..launch import check_runnable
from .naive import ACTIVATIONS, NORM_EPS

__all__ = ["short_conv", "short_conv_multi"]

_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}  # identity 0, silu 1, relu 2, elu(+1) 3


@triton.jit
def _act_fwd(y, ACT: tl.constexpr):
    a = y  # identity
    if ACT == 1:
        a = y * tl.sigmoid(y)
    elif ACT == 2:
        a = tl.maximum(y, 0.)
    elif ACT == 3:
        a = tl.where(y > 0, y + 1., tl.exp(tl.minimum(y, 0.)))
    return a


@triton.jit
def _act_grad(y, ACT: tl.constexpr):
    """d act / d y."""
    d = y * 0. + 1.  # identity
    if ACT == 1:
        s = tl.sigmoid(y)
        d = s * (1. + y * (1. - s))
    elif ACT == 2:
        d = tl.where(y > 0, 1., 0.)
    elif ACT == 3:
        d = tl.where(y > 0, 1., tl.exp(tl.minimum(y, 0.)))
    return d


@triton.jit
def _conv_block(x_base, w, pos, o_t, o_d, m_t, m_d, SX, W: tl.constexpr, VARLEN: tl.constexpr,
                BT: tl.constexpr, BD: tl.constexpr):
    """[BT, BD] float32 block of y for tokens o_t, channels o_d of one batch row (x_base points at it; row stride
    SX)."""
    if VARLEN:
        b_p = tl.load(pos + o_t, mask=m_t, other=0)
    else:
        b_p = o_t
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for j in tl.static_range(W):
        shift = W - 1 - j
        m = (m_t & (b_p >= shift))[:, None] & m_d[None, :]
        b_x = tl.load(x_base + (o_t - shift)[:, None] * SX + o_d[None, :], mask=m, other=0.)
        b_w = tl.load(w + o_d * W + j, mask=m_d, other=0.)
        acc += b_x.to(tl.float32) * b_w.to(tl.float32)[None, :]
    return acc


@triton.jit
def _short_conv_fwd_kernel(x, w, o, pos, T, D, SX, G, eps, W: tl.constexpr, ACT: tl.constexpr,
                           NORM: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t = i_t * BT + tl.arange(0, BT)
    o_g = tl.arange(0, BD)
    o_d = i_d * G + o_g
    m_t, m_d = o_t < T, (o_g < G) & (o_d < D)
    row = i_b.to(tl.int64) * T * D
    b_y = _conv_block(x + i_b.to(tl.int64) * T * SX, w, pos, o_t, o_d, m_t, m_d, SX, W, VARLEN, BT, BD)
    b_a = _act_fwd(b_y, ACT)
    if NORM:
        b_a = tl.where(m_d[None, :], b_a, 0.)
        b_n = tl.sqrt(tl.sum(b_a * b_a, axis=1))
        b_a = b_a / tl.maximum(b_n, eps)[:, None]
    tl.store(o + row + o_t[:, None] * D + o_d[None, :], b_a.to(o.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _short_conv_bwd_dy_kernel(x, w, do, dy, pos, T, D, SX, G, eps, W: tl.constexpr, ACT: tl.constexpr,
                              NORM: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t = i_t * BT + tl.arange(0, BT)
    o_g = tl.arange(0, BD)
    o_d = i_d * G + o_g
    m_t, m_d = o_t < T, (o_g < G) & (o_d < D)
    m = m_t[:, None] & m_d[None, :]
    row = i_b.to(tl.int64) * T * D
    b_y = _conv_block(x + i_b.to(tl.int64) * T * SX, w, pos, o_t, o_d, m_t, m_d, SX, W, VARLEN, BT, BD)
    b_do = tl.load(do + row + o_t[:, None] * D + o_d[None, :], mask=m, other=0.).to(tl.float32)
    if NORM:
        # o = a / max(|a|, eps):  da = (do - o <o, do>) / |a|  where |a| > eps, else do / eps
        b_a = tl.where(m_d[None, :], _act_fwd(b_y, ACT), 0.)
        b_n = tl.sqrt(tl.sum(b_a * b_a, axis=1))
        b_r = 1. / tl.maximum(b_n, eps)
        b_o = b_a * b_r[:, None]
        b_dot = tl.where(b_n > eps, tl.sum(b_o * b_do, axis=1), 0.)
        b_da = (b_do - b_o * b_dot[:, None]) * b_r[:, None]
    else:
        b_da = b_do
    b_dy = tl.where(m, b_da * _act_grad(b_y, ACT), 0.)
    tl.store(dy + row + o_t[:, None] * D + o_d[None, :], b_dy, mask=m)


@triton.jit
def _add_tap(acc, b, J: tl.constexpr, j: tl.constexpr):
    """acc + b for the accumulator of tap J when the loop is at tap j (both known when compiling)."""
    if j == J:
        acc += b
    return acc


@triton.jit
def _store_tap(dw, acc, J: tl.constexpr, o_d, m_d, W: tl.constexpr):
    if J < W:
        tl.store(dw + o_d * W + J, tl.sum(acc, axis=0), mask=m_d)


@triton.jit
def _short_conv_bwd_dx_kernel(dy, w, x, dx, dw, pos, T, D, SX, NS, W: tl.constexpr, VARLEN: tl.constexpr,
                              BT: tl.constexpr, BD: tl.constexpr, SPAN: tl.constexpr):
    i_s, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    row = i_b.to(tl.int64) * T * D
    row_x = i_b.to(tl.int64) * T * SX
    # dw[d, j] = sum_s dy_{s + shift_j}[d] x_s[d]: one [BT, BD] float32 sum per tap over the SPAN token blocks,
    # reduced over tokens once at the end (up to MAX_W taps; the unused ones are compiled away)
    a0 = tl.zeros([BT, BD], dtype=tl.float32)
    a1 = tl.zeros([BT, BD], dtype=tl.float32)
    a2 = tl.zeros([BT, BD], dtype=tl.float32)
    a3 = tl.zeros([BT, BD], dtype=tl.float32)
    a4 = tl.zeros([BT, BD], dtype=tl.float32)
    a5 = tl.zeros([BT, BD], dtype=tl.float32)
    a6 = tl.zeros([BT, BD], dtype=tl.float32)
    a7 = tl.zeros([BT, BD], dtype=tl.float32)
    for i in range(SPAN):
        o_t = (i_s * SPAN + i) * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_x = tl.load(x + row_x + o_t[:, None] * SX + o_d[None, :], mask=m_t[:, None] & m_d[None, :],
                      other=0.).to(tl.float32)
        acc = tl.zeros([BT, BD], dtype=tl.float32)
        for j in tl.static_range(W):
            shift = W - 1 - j  # y_s used x_t through tap j when s = t + shift, in the same sequence
            o_s = o_t + shift
            m_s = o_s < T
            if VARLEN:
                m_s = m_s & (tl.load(pos + o_s, mask=m_s, other=0) >= shift)
            b_dy = tl.load(dy + row + o_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0.)
            acc += b_dy * tl.load(w + o_d * W + j, mask=m_d, other=0.).to(tl.float32)[None, :]
            b_p = b_dy * b_x
            a0 = _add_tap(a0, b_p, 0, j)
            a1 = _add_tap(a1, b_p, 1, j)
            a2 = _add_tap(a2, b_p, 2, j)
            a3 = _add_tap(a3, b_p, 3, j)
            a4 = _add_tap(a4, b_p, 4, j)
            a5 = _add_tap(a5, b_p, 5, j)
            a6 = _add_tap(a6, b_p, 6, j)
            a7 = _add_tap(a7, b_p, 7, j)
        tl.store(dx + row_x + o_t[:, None] * SX + o_d[None, :], acc.to(dx.dtype.element_ty),
                 mask=m_t[:, None] & m_d[None, :])
    dw = dw + (i_b * NS + i_s).to(tl.int64) * D * W
    _store_tap(dw, a0, 0, o_d, m_d, W)
    _store_tap(dw, a1, 1, o_d, m_d, W)
    _store_tap(dw, a2, 2, o_d, m_d, W)
    _store_tap(dw, a3, 3, o_d, m_d, W)
    _store_tap(dw, a4, 4, o_d, m_d, W)
    _store_tap(dw, a5, 5, o_d, m_d, W)
    _store_tap(dw, a6, 6, o_d, m_d, W)
    _store_tap(dw, a7, 7, o_d, m_d, W)


def _blocks(D: int, norm_dim: Optional[int]):
    """(G channels per program, BD >= G a power of two, number of channel groups)."""
    if norm_dim is not None:
        return norm_dim, triton.next_power_of_2(norm_dim), D // norm_dim
    BD = min(128, triton.next_power_of_2(D))
    return BD, BD, triton.cdiv(D, BD)


def _positions(cu_seqlens: Optional[torch.Tensor], T: int, device) -> Optional[torch.Tensor]:
    """(T,) int32 position of every packed token inside its sequence, or None without cu_seqlens."""
    if cu_seqlens is None:
        return None
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    idx = torch.arange(T, device=device)
    return (idx - cu[torch.searchsorted(cu[1:], idx, right=True)]).to(torch.int32)


#: (tokens per program, num_warps) of each kernel, and the dx kernel's most token blocks per program
#: (kernels/README.md: conv launch settings)
FWD_LAUNCH, DY_LAUNCH, DX_LAUNCH, DX_SPAN = (64, 4), (16, 4), (16, 4), 16
MAX_W = 8  # taps the dx kernel's weight-gradient sums hold


def short_conv_fwd(x, w, act, norm_dim, pos):
    """x: (B, T, D) view with unit channel stride (its rows may be wider: a slice of a fused projection)."""
    B, T, D = x.shape
    G, BD, NG = _blocks(D, norm_dim)
    o = torch.empty(B, T, D, device=x.device, dtype=x.dtype)
    BT, nw = FWD_LAUNCH
    _short_conv_fwd_kernel[(triton.cdiv(T, BT), NG, B)](x, w, o, pos if pos is not None else x, T, D, x.stride(1), G,
                                                        NORM_EPS, W=w.shape[1], ACT=act, NORM=norm_dim is not None,
                                                        VARLEN=pos is not None, BT=BT, BD=BD, num_warps=nw)
    return o


def _dx_span(x: torch.Tensor, T: int, BT: int, n_d: int) -> int:
    """Token blocks per dx program: DX_SPAN, halved while the grid would give fewer than 2 programs per SM."""
    span, sms = DX_SPAN, sm_count(x)
    while span > 1 and x.shape[0] * triton.cdiv(T, BT * span) * n_d < 2 * sms:
        span //= 2
    return span


def short_conv_bwd(x, w, do, act, norm_dim, pos, dx):
    """Writes dx (a view shaped and strided like x) and returns dw (D, W) float32."""
    B, T, D = x.shape
    W = w.shape[1]
    G, BD, NG = _blocks(D, norm_dim)
    BT, nw = DY_LAUNCH
    dy = torch.empty(B, T, D, device=x.device, dtype=torch.float32)
    p = pos if pos is not None else x
    _short_conv_bwd_dy_kernel[(triton.cdiv(T, BT), NG, B)](x, w, do, dy, p, T, D, x.stride(1), G, NORM_EPS, W=W,
                                                           ACT=act, NORM=norm_dim is not None, VARLEN=pos is not None,
                                                           BT=BT, BD=BD, num_warps=nw)
    BDX = min(128, triton.next_power_of_2(D))
    BT, nw = DX_LAUNCH
    n_d = triton.cdiv(D, BDX)
    span = _dx_span(x, T, BT, n_d)
    NS = triton.cdiv(T, BT * span)
    dw = torch.empty(B * NS, D, W, device=x.device, dtype=torch.float32)
    _short_conv_bwd_dx_kernel[(NS, n_d, B)](dy, w, x, dx, dw, p, T, D, x.stride(1), NS, W=W, VARLEN=pos is not None,
                                            BT=BT, BD=BDX, SPAN=span, num_warps=nw)
    return dw.sum(0)


class ShortConvFunction(torch.autograd.Function):
    """Several convolutions over consecutive channel ranges of one input (e.g. q, k, v of a fused projection):
    one saved input, one input gradient, one output per part."""

    @staticmethod
    def forward(ctx, x, pos, acts, norm_dims, *weights):
        ws = [wt.reshape(wt.shape[0], -1).contiguous() for wt in weights]  # (D_i, W), as stored: no copy
        outs, c0 = [], 0
        for w, act, nd in zip(ws, acts, norm_dims):
            outs.append(short_conv_fwd(x[..., c0:c0 + w.shape[0]], w, act, nd, pos))
            c0 += w.shape[0]
        ctx.save_for_backward(x, pos, *ws)
        ctx.acts, ctx.norm_dims, ctx.weight_shapes = acts, norm_dims, [wt.shape for wt in weights]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *dos):
        x, pos, *ws = ctx.saved_tensors
        dx = torch.empty_like(x)
        dws, c0 = [], 0
        for w, do, act, nd, shape in zip(ws, dos, ctx.acts, ctx.norm_dims, ctx.weight_shapes):
            D = w.shape[0]
            do = torch.zeros(x.shape[:2] + (D,), device=x.device, dtype=x.dtype) if do is None else do.contiguous()
            dws.append(short_conv_bwd(x[..., c0:c0 + D], w, do, act, nd, pos, dx[..., c0:c0 + D])
                       .view(shape).to(w.dtype))
            c0 += D
        return (dx, None, None, None, *dws)


def _validate(x, weights, activations, norm_dims, cu_seqlens):
    if x.dim() != 3:
        raise ValueError(f"short_conv: x must be (B, T, D), got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"short_conv: x dtype {x.dtype} not supported (bfloat16, float16, float32)")
    for wt in weights:
        if wt.dim() not in (2, 3) or (wt.dim() == 3 and wt.shape[1] != 1):
            raise ValueError(f"short_conv: weight must be (D, W) or (D, 1, W), got {tuple(wt.shape)}")
        if wt.shape[-1] > MAX_W:
            raise ValueError(f"short_conv: kernel size {wt.shape[-1]} > {MAX_W}, the most the kernels hold")
        if wt.device != x.device:
            raise ValueError(f"short_conv: weight is on {wt.device} but x is on {x.device}")
    if sum(wt.shape[0] for wt in weights) != D:
        raise ValueError(f"short_conv: weight must be (D, W) or (D, 1, W) with D = {D}, got "
                         f"{[tuple(wt.shape) for wt in weights]}")
    for act, nd, wt in zip(activations, norm_dims, weights):
        if act not in _ACT_ID:
            raise ValueError(f"short_conv: activation must be one of {ACTIVATIONS}, got {act!r}")
        if nd is not None and (nd < 1 or wt.shape[0] % nd):
            raise ValueError(f"short_conv: norm_dim={nd} must divide D={wt.shape[0]}")
    if cu_seqlens is None:
        return None
    if B != 1:
        raise ValueError(f"short_conv: with cu_seqlens the batch size must be 1, got x {tuple(x.shape)}")
    cu = cu_seqlens.detach().to("cpu", torch.long)
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != T or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"short_conv: cu_seqlens must be non-decreasing from 0 to T={T}, got {cu.tolist()}")
    return _positions(cu_seqlens, T, x.device)


def short_conv_multi(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    activations: Sequence[str],
    norm_dims: Sequence[Optional[int]],
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, ...]:
    """:func:`short_conv` over consecutive channel ranges of x, one range per weight (e.g. x = the fused q/k/v
    projection (B, T, D_q + D_k + D_v)).  Saves x once and returns one contiguous (B, T, D_i) output per range; the
    gradient of x is one tensor, so a fused projection before it needs no slicing in its backward.

    Example::

        >>> q, k, v = short_conv_multi(qkv, [wq, wk, wv], ["silu", "silu", "silu"], [128, 128, None])
    """
    if not (len(weights) == len(activations) == len(norm_dims) >= 1):
        raise ValueError(f"short_conv: weights, activations, norm_dims must have one length >= 1, got "
                         f"{len(weights)}, {len(activations)}, {len(norm_dims)}")
    pos = _validate(x, weights, activations, norm_dims, cu_seqlens)
    check_runnable("short_conv", x, *weights)
    return ShortConvFunction.apply(x.contiguous(), pos, tuple(_ACT_ID[a] for a in activations), tuple(norm_dims),
                                   *weights)


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str = "identity",
    norm_dim: Optional[int] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused depthwise causal short convolution, activation and optional per-head L2 norm (Triton, fwd + bwd).

    Args:
        x: (B, T, D) bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``); made contiguous.
        weight: (D, W) or (D, 1, W) (nn.Conv1d's depthwise layout), any float dtype; taps run in float32.
        activation: "identity", "silu", "relu" or "elu" (elu + 1).
        norm_dim: if given, L2-normalise every group of ``norm_dim`` channels (one head; must divide D), eps 1e-6.
        cu_seqlens: optional (N + 1,) int32/int64 offsets packing N sequences into B = 1.

    Returns:
        (B, T, D) in x's dtype.  Gradients flow to x and weight; only x is saved for the backward.

    Example::

        >>> q = short_conv(q_proj(x), q_conv.weight, "silu", norm_dim=128)   # (B, T, H * 128), unit-norm heads
    """
    return short_conv_multi(x, [weight], [activation], [norm_dim], cu_seqlens)[0]
