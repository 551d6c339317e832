"""PyTorch form of one decoding step of a matrix-state mixer (the reference of ``step.py``, and the CPU path).

For each row b and head h, with raw projections q, k (H*K channels) and v (H*V channels) of the new token:

    x <- ShortConv(x) for x in q, k, v      (optional: depthwise causal conv of width W over the cached last W - 1
                                             raw inputs, the cache shifted by one to hold the new input)
    q, k <- norm(act_qk(q)), norm(act_qk(k))   per head; act in {identity, silu, relu, elu (elu + 1)},
                                             norm in {None, l2, l1} (eps 1e-6 as F.normalize / the l1 form)
    v <- act_v(v)                           identity or silu
    S <- exp(g) S                           (optional g: a log decay per head)
    S <- S + beta k (v - S^T k)^T           delta rule (``delta=True``; beta 1 when None)
    S <- S + k v^T                          plain linear attention / retention (``delta=False``)
    o = scale S^T q                         scale K^-0.5 by default
    o <- RMSNorm(o) [* silu(gate)]          (optional: ``o_norm_weight``, per head, float32)

The state S ([B, H, K, V], float32) and the conv caches ([B, channels, W - 1]) are updated in place.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["naive_decode_step", "ACTIVATIONS", "NORMS"]

ACTIVATIONS = ("identity", "silu", "relu", "elu")
NORMS = (None, "l2", "l1")


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    if name == "elu":
        return F.elu(x) + 1.0
    return x


def _norm(x: torch.Tensor, kind: Optional[str]) -> torch.Tensor:  # (B, H, D), over D
    if kind == "l2":
        return F.normalize(x, p=2.0, dim=-1, eps=1e-6)
    if kind == "l1":
        return x / x.abs().sum(-1, keepdim=True).clamp_min(1e-6)
    return x


def _conv(x: torch.Tensor, cache: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, C) raw input; cache (B, C, W - 1) updated in place; weight (C, W) -> (B, C) in the compute dtype."""
    window = torch.cat([cache.to(x.dtype), x[..., None]], dim=-1)  # (B, C, W)
    y = (window * weight.to(x.dtype)).sum(-1)
    cache.copy_(window[..., 1:])
    return y


def naive_decode_step(
    state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    beta: Optional[torch.Tensor] = None, g: Optional[torch.Tensor] = None, delta: bool = True,
    conv_states: Optional[Sequence[torch.Tensor]] = None, conv_weights: Optional[Sequence[torch.Tensor]] = None,
    qk_activation: str = "identity", qk_norm: Optional[str] = None, v_activation: str = "identity",
    scale: Optional[float] = None, beta_logits: bool = False, o_norm_weight: Optional[torch.Tensor] = None,
    o_norm_eps: float = 1e-6, gate: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Arguments as :func:`kernels.decode_step`; computes in float32 (float64 for float64 inputs).

    Returns o [B, H, V] in v's dtype; ``state`` and ``conv_states`` are updated in place."""
    B, H, K, V = state.shape
    cdt = torch.float64 if state.dtype == torch.float64 else torch.float32
    out_dtype = v.dtype
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    if conv_states is not None:
        w = [c.reshape(c.shape[0], -1) for c in conv_weights]
        q, k, v = (_conv(x, s, wt) for x, s, wt in zip((q, k, v), conv_states, w))
    q = _norm(_act(q.view(B, H, K), qk_activation), qk_norm)
    k = _norm(_act(k.view(B, H, K), qk_activation), qk_norm)
    v = _act(v.view(B, H, V), v_activation)
    S = state.to(cdt)
    if g is not None:
        S = S * g.to(cdt).exp()[..., None, None]
    if delta:
        err = v - torch.einsum("bhkv,bhk->bhv", S, k)
        if beta is not None:
            beta = torch.sigmoid(beta.to(cdt)) if beta_logits else beta.to(cdt)
        v = err if beta is None else beta[..., None] * err
    S = S + k[..., :, None] * v[..., None, :]
    state.copy_(S)
    scale = K ** -0.5 if scale is None else scale
    o = scale * torch.einsum("bhkv,bhk->bhv", S, q)  # (B, H, V)
    if o_norm_weight is not None:
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + o_norm_eps) * o_norm_weight.to(cdt)
        if gate is not None:
            o = o * F.silu(gate.to(cdt).view(B, H, V))
    elif gate is not None:
        raise ValueError("gate is only applied with o_norm_weight (RMSNorm(o) * silu(gate))")
    return o.to(out_dtype)
