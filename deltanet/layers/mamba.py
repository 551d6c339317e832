"""The Mamba block (Gu & Dao, 2023): a selective state-space (S6) token mixer.

With E = ssm_expand * hidden_size channels, N = ssm_state_size, R = dt_rank:

    x, z  = split(W_in u)                              (B, T, E) each, no bias
    x     = silu(CausalConv1d(x) + b_conv)             depthwise, kernel conv_size (4)
    dt_r, B, C = split(W_x x)                          (B, T, R), (B, T, N), (B, T, N)
    dt    = softplus(W_dt dt_r + b_dt)                 (B, T, E)
    y     = selective_scan(x, dt, A = -exp(A_log), B, C, D, z)   h_t = exp(dt A) h + dt B x;  y = C.h + D x;  y *= silu(z)
    out   = W_out y

Initialisation as published: b_dt = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored at 1e-4),
W_dt uniform in +-R^-0.5, A_log[d, n] = log(n + 1) (S4D-real: A = -(1, 2, ..., N) in every channel), D = 1.
A_log and D carry ``_no_weight_decay``.

Decoding state per layer: ``conv`` (B, E, conv_size - 1), the last conv inputs, and ``ssm`` (B, E, N) float32.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from ..config import DeltaNetConfig
from .conv import ShortConvolution
from .static import copy_state

__all__ = ["Mamba"]


class Mamba(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        C, E, N, R = config.hidden_size, config.ssm_expand * config.hidden_size, config.ssm_state_size, config.dt_rank
        self.d_inner, self.d_state, self.dt_rank = E, N, R
        self.in_proj = nn.Linear(C, 2 * E, bias=False)
        self.conv1d = ShortConvolution(E, config.conv_size)
        self.conv_bias = nn.Parameter(torch.empty(E))
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(E, C, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """The published S6 initialisation of conv bias, dt_proj, A_log and D (the LM's generic init leaves these to
        this method: it zeroes every Linear bias, b_dt included, and then calls it)."""
        cfg = self.config
        bound = 1.0 / math.sqrt(cfg.conv_size)  # nn.Conv1d's default bias init (fan_in = kernel size, depthwise)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (hi - lo) + lo).clamp_min(1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(n).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def resolve_backend(self, x: torch.Tensor) -> str:
        return self.config.resolve_backend(x.is_cuda)

    def forward(
        self,
        u: torch.Tensor,  # (B, T, C)
        state: Optional[dict] = None,  # {"conv": (B, E, W-1), "ssm": (B, E, N) fp32} from a call with use_cache
        use_cache: bool = False,
        cu_seqlens: Optional[torch.Tensor] = None,
        mode: Optional[str] = None,  # 'scan' | 'step'; None: step for one token, scan otherwise
        pad: Optional[torch.Tensor] = None,  # (B, T) bool, True at left padding
        **_: Any,
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        Bsz, T, _ = u.shape
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        if cu_seqlens is not None and (state is not None or use_cache):
            raise NotImplementedError("Mamba: cu_seqlens with a generation cache is not supported")
        if mode is None:
            mode = "step" if T == 1 else "scan"
        if mode not in ("scan", "step"):
            raise ValueError(f"mode must be 'scan' or 'step', got {mode!r}")
        state = state or {}
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, T, E) each
        if pad is not None:  # padding enters the convolution as zeros (as before a sequence's start) ...
            x = x.masked_fill(pad[..., None], 0.0)
        x, conv_state = self.conv1d(x, state.get("conv"), use_cache, cu_seqlens)
        x = F.silu(x + self.conv_bias.to(x.dtype))
        dt, B, C = self.x_proj(x).split([R, N, N], dim=-1)
        backend = self.resolve_backend(u)
        # The Triton kernels add dt_proj's bias and apply softplus themselves, in float32, without a (B, T, E) float32
        # step-size tensor; the PyTorch path, and padding (which needs dt = 0), compute dt here.
        fused = backend == "triton" and pad is None
        dt_bias = self.dt_proj.bias.float() if fused else None
        if fused:
            dt = F.linear(dt, self.dt_proj.weight)  # (B, T, E), raw
        else:
            dt = F.softplus(self.dt_proj(dt))  # (B, T, E)
        if pad is not None:  # ... and leaves the state unchanged (dt = 0: decay 1, input 0)
            dt = dt.masked_fill(pad[..., None], 0.0)
        A = -torch.exp(self.A_log.float())  # (E, N), negative by construction
        dtype = x.dtype  # under autocast softplus returns float32 while x is bf16: the kernels take one dtype
        dt, B, C, z = dt.to(dtype), B.to(dtype), C.to(dtype), z.to(dtype)
        h0 = state.get("ssm")
        if mode == "scan":
            if backend == "triton":
                y, h = kernels.selective_scan(x, dt, A, B, C, self.D, z, initial_state=h0, output_final_state=use_cache,
                                              cu_seqlens=cu_seqlens, dt_bias=dt_bias, dt_softplus=fused,
                                              check_A_sign=False)
            else:
                y, h = kernels.naive_selective_scan(x, dt, A, B, C, self.D, z, initial_state=h0,
                                                    output_final_state=use_cache, cu_seqlens=cu_seqlens)
                h = h.float() if h is not None else None
        else:
            if cu_seqlens is not None:
                raise ValueError("mode='step' does not take cu_seqlens")
            h = h0.float().clone() if h0 is not None else x.new_zeros(Bsz, E, N, dtype=torch.float32)
            ys = []
            for t in range(T):  # token by token through the decoding step
                if backend == "triton":
                    ys.append(kernels.selective_scan_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], self.D, z[:, t],
                                                          dt_bias=dt_bias, dt_softplus=fused))
                else:
                    y_t, h = kernels.naive_selective_scan_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], self.D,
                                                               z[:, t])
                    ys.append(y_t)
            y = torch.stack(ys, dim=1)
        out = self.out_proj(y)
        return out, ({"conv": conv_state, "ssm": h} if use_cache else None)

    # ---- static decoding state (deltanet/layers/static.py) ----
    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        E, N, W = self.d_inner, self.d_state, self.config.conv_size
        return {"conv": torch.zeros(batch, E, W - 1, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, E, N, device=device, dtype=torch.float32)}

    load_static_state = staticmethod(copy_state)

    def step(self, u: torch.Tensor, static: dict, pos: torch.Tensor) -> torch.Tensor:
        """u (B, 1, C) -> (B, 1, C); the conv and SSM states in ``static`` are updated in place (on the Triton
        backend by kernels.selective_scan_step, which writes the state itself)."""
        R, N = self.dt_rank, self.d_state
        x, z = self.in_proj(u[:, 0]).chunk(2, dim=-1)  # (B, E) each
        x = self.conv1d.step(x, static["conv"])
        x = F.silu(x + self.conv_bias.to(x.dtype))
        dt, B, C = self.x_proj(x).split([R, N, N], dim=-1)
        A = -torch.exp(self.A_log.float())  # (E, N)
        dtype = x.dtype
        if self.resolve_backend(u) == "triton":
            dt = F.linear(dt, self.dt_proj.weight)  # raw; the kernel adds the bias and applies softplus
            y = kernels.selective_scan_step(static["ssm"], x, dt.to(dtype), A, B.to(dtype), C.to(dtype), self.D,
                                            z.to(dtype), dt_bias=self.dt_proj.bias.float(), dt_softplus=True)
        else:
            dt = F.softplus(self.dt_proj(dt))
            y, h = kernels.naive_selective_scan_step(static["ssm"], x, dt.to(dtype), A, B.to(dtype), C.to(dtype),
                                                     self.D, z.to(dtype))
            static["ssm"].copy_(h)
        return self.out_proj(y)[:, None]
