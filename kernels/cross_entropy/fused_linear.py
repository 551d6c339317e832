"""Linear cross-entropy that computes its gradient in the forward pass, chunk by chunk, writing it over the logits.

    loss = mean_{i: y_i != ignore} ( logsumexp(z_i) - z_i[y_i] ),   z = h W^T
    dz_i = (softmax(z_i) - onehot(y_i)) / n,   dh = dz W,   dW = dz^T h

The loss is the last op of the forward, so its gradient can be formed right away: for each chunk of rows the logits
(chunk, V) exist once, ``_ce_fwd_bwd_kernel`` reads every row twice (max and sum of exp; then the gradient) and
overwrites it in place with dz, and two matmuls give this chunk's dh and its share of dW.  Nothing of size
(chunk, V) survives the chunk, no float32 copy of the logits is made, and the LM-head matmul runs three times in all
(the checkpointed chunked loss of ``deltanet/model.py`` runs it four times: forward, recompute, two in backward).
The backward only scales the stored dh, dW by the incoming gradient.

Kernel: ``_ce_fwd_bwd_kernel``, one program per row, blocks of ``BV`` vocabulary entries, float32 arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import check_runnable

__all__ = ["linear_cross_entropy"]

MAX_BV = 4096  # vocabulary entries per block of the row loops


@triton.jit
def _ce_fwd_bwd_kernel(z, labels, loss, inv_n, V, ignore_index, BV: tl.constexpr):
    i_r = tl.program_id(0)
    row = z + i_r.to(tl.int64) * V
    b_y = tl.load(labels + i_r)
    b_scale = tl.load(inv_n)
    m_run = tl.full([BV], float("-inf"), tl.float32)
    s_run = tl.zeros([BV], dtype=tl.float32)
    for v0 in range(0, V, BV):  # per lane running max and sum of exp
        o_v = v0 + tl.arange(0, BV)
        b_z = tl.load(row + o_v, mask=o_v < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_run, b_z)
        m_safe = tl.where(m_new == float("-inf"), 0., m_new)  # a lane with no entry yet: no -inf - -inf
        s_run = s_run * tl.exp(m_run - m_safe) + tl.exp(b_z - m_safe)
        m_run = m_new
    b_m = tl.max(m_run, axis=0)
    b_lse = b_m + tl.log(tl.sum(s_run * tl.exp(m_run - b_m), axis=0))
    keep = b_y != ignore_index
    b_zy = tl.load(row + tl.where(keep, b_y, 0)).to(tl.float32)
    tl.store(loss + i_r, tl.where(keep, b_lse - b_zy, 0.))
    b_g = tl.where(keep, b_scale, 0.)
    for v0 in range(0, V, BV):  # gradient over the logits, in place
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_z = tl.load(row + o_v, mask=m_v, other=0.).to(tl.float32)
        b_d = (tl.exp(b_z - b_lse) - tl.where(o_v == b_y, 1., 0.)) * b_g
        tl.store(row + o_v, b_d.to(z.dtype.element_ty), mask=m_v)


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, labels, ignore_index, chunk_size, need_grad):
        with torch.autocast(h.device.type, enabled=False):  # the matmuls run in h's dtype, as documented
            return LinearCrossEntropyFunction._forward(ctx, h, weight, labels, ignore_index, chunk_size, need_grad)

    @staticmethod
    def _forward(ctx, h, weight, labels, ignore_index, chunk_size, need_grad):
        N, C = h.shape
        V = weight.shape[0]
        w = weight.to(h.dtype)
        keep = labels != ignore_index
        n = keep.sum()
        inv_n = (1.0 / n.clamp_min(1).to(torch.float32)).reshape(1)
        loss = torch.empty(N, device=h.device, dtype=torch.float32)
        dh = torch.empty_like(h) if need_grad else None
        dw = torch.zeros(V, C, device=h.device, dtype=torch.float32) if need_grad else None
        BV = min(MAX_BV, triton.next_power_of_2(V))
        for s in range(0, N, chunk_size):
            e = min(N, s + chunk_size)
            z = h[s:e] @ w.t()  # (chunk, V) in the compute dtype
            _ce_fwd_bwd_kernel[(e - s,)](z, labels[s:e], loss[s:], inv_n, V, ignore_index, BV=BV, num_warps=8)
            if need_grad:  # z now holds dz
                torch.matmul(z, w, out=dh[s:e])
                dw += (z.t() @ h[s:e]).float()
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        return loss.sum() * inv_n[0]

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.saved_tensors
        if dh is None:
            raise RuntimeError("linear_cross_entropy: called with need_grad=False, it has no gradient to give")
        return (dh * dloss.to(dh.dtype), (dw * dloss).to(ctx.weight_dtype), None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                         chunk_size: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight^T`` over rows whose label is not ``ignore_index``; the gradients (to h and
    weight) are formed during the forward (see the module docstring).

    Args:
        h: (N, C) bfloat16, float16 or float32 hidden states (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        weight: (V, C) LM head, any float dtype (cast to h's dtype for the matmuls; its gradient in its own dtype).
        labels: (N,) int64 targets in [0, V), or ``ignore_index``.
        chunk_size: rows per chunk: at most (chunk_size, V) logits in h's dtype are alive at a time.

    Returns:
        scalar float32 loss (0 with a zero gradient when every label is ignored).

    Example::

        >>> loss = linear_cross_entropy(h[:, :-1].reshape(-1, C), lm_head.weight, ids[:, 1:].reshape(-1))
    """
    if h.dim() != 2:
        raise ValueError(f"linear_cross_entropy: h must be (N, C), got {tuple(h.shape)}")
    if h.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"linear_cross_entropy: h dtype {h.dtype} not supported (bfloat16, float16, float32)")
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be (V, {h.shape[1]}), got {tuple(weight.shape)}")
    if labels.shape != (h.shape[0],) or labels.dtype != torch.long:
        raise ValueError(f"linear_cross_entropy: labels must be int64 ({h.shape[0]},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if weight.device != h.device or labels.device != h.device:
        raise ValueError(f"linear_cross_entropy: h, weight, labels must share a device, got {h.device}, "
                         f"{weight.device}, {labels.device}")
    if chunk_size < 1:
        raise ValueError(f"linear_cross_entropy: chunk_size must be positive, got {chunk_size}")
    check_runnable("linear_cross_entropy", h, weight)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return LinearCrossEntropyFunction.apply(h.contiguous(), weight, labels.contiguous(), ignore_index, chunk_size,
                                            need_grad)
