"""Causal softmax attention with RoPE: global (Transformer++ / global hybrid) or sliding-window (SWA hybrid).

Paths (all give the same numbers up to float rounding; tests check it):

- global, no varlen, no cache read: ``F.scaled_dot_product_attention(is_causal=True)`` on every device.
- sliding window or varlen (``cu_seqlens``) on CUDA: FlexAttention with a block-sparse ``BlockMask``, so the cost
  grows with T * window, not T^2.
- the same on CPU, and every call that reads a cache: SDPA with an explicit boolean mask built from token positions.
  A call that reads a cache continues it by T >= 1 tokens (a decoding step, or a piece of a prompt prefilled in
  pieces): the queries are the last T keys, the mask offset by the tokens already cached; a piece of several tokens
  without any padding takes a mask of positions only (global: ``causal_lower_right``, which SDPA runs without
  building it), not one per row.

Generation cache per layer: global attention keeps all keys/values (a KV cache growing with the context);
sliding-window attention keeps a ring buffer of ``window`` slots (slot = position % window), so its memory is
constant in the context length.  Keys are cached after RoPE, hence the order of slots does not matter.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from ..config import DeltaNetConfig
from .conv import varlen_positions
from .static import step_linear

__all__ = ["Attention", "RotaryEmbedding", "apply_rotary"]


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """positions: (T,) long -> cos, sin: (T, dim) float32."""
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]  # (T, dim/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos, sin: (T, D). Rotate-half convention, computed in float32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (xf * cos[None, :, None, :] + rot * sin[None, :, None, :]).to(x.dtype)


def _allowed(q_pos, k_pos, window, q_seq=None, k_seq=None) -> torch.Tensor:
    """(Tq, Tk) bool: key visible from query. Positions < 0 mark empty cache slots."""
    d = q_pos[:, None] - k_pos[None, :]
    m = (d >= 0) & (k_pos[None, :] >= 0)
    if window is not None:
        m = m & (d < window)
    if q_seq is not None:
        m = m & (q_seq[:, None] == k_seq[None, :])
    return m


# dynamic=None (dynamo's automatic dynamic shapes): the first shape compiles static, a second one recompiles with
# the changed sizes symbolic, and later shapes reuse that.  dynamic=False compiled once per (batch, length), and
# past dynamo's recompile limit (8) flex_attention fell back to its eager form, which materialises the (B, H, T, T)
# scores: a prefill of varying prompt lengths then ran out of memory (the SWA hybrid at batch 64, 8K-token prompts, in
# benchmarks/bench_generate.py; it fits with dynamic=None).  Training, one shape, compiles once either way.
@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=None)


FLEX_BLOCK = 128  # FlexAttention's block of queries and of keys


def _block_mask(q_lo, q_hi, kv_lo, kv_hi, seq_lo, seq_hi, window: Optional[int], mask_mod, T: int):
    """BlockMask built from per-block bounds, never from a (T, T) mask.

    `create_block_mask` evaluates `mask_mod` at every (query, key) pair: on the H200, a window layer's first call at
    B = 2, T = 16384 peaked 2.8 GB above its inputs with it (test_gpu.py's bound, 1.07 GB, failed), for a mask of
    (T / 128)^2 blocks.  Here q_lo/q_hi, kv_lo/kv_hi are each block's first and last position, seq_lo/seq_hi its first
    and last sequence id (packed sequences in order; all zero without cu_seqlens).  A block pair is visited when
    some pair of its tokens may attend (causal, same sequence, inside the window), and is full (mask_mod skipped)
    when every pair does.  Blocks that run past T are never full."""
    qlo, qhi, qs0, qs1 = q_lo[:, None], q_hi[:, None], seq_lo[:, None], seq_hi[:, None]
    klo, khi, ks0, ks1 = kv_lo[None], kv_hi[None], seq_lo[None], seq_hi[None]
    visit = (qhi >= klo) & (ks1 >= qs0) & (ks0 <= qs1)
    full = (qlo >= khi) & (qs0 == qs1) & (ks0 == ks1) & (qs0 == ks0)
    if window is not None:
        visit &= qlo - khi < window
        full &= qhi - klo < window
    whole = (q_hi - q_lo + 1) == FLEX_BLOCK
    full &= visit & whole[:, None] & whole[None]
    partial = visit & ~full

    def lists(m):  # (count per query block, key-block indices with the selected ones first, in order)
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return m.sum(-1, dtype=torch.int32)[None, None], order[None, None]

    from torch.nn.attention.flex_attention import BlockMask
    (n, idx), (nf, idxf) = lists(partial), lists(full)
    return BlockMask.from_kv_blocks(n, idx, nf, idxf, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(T, T))


def _block_bounds(T: int, device):
    lo = torch.arange(0, T, FLEX_BLOCK, device=device)
    return lo, torch.clamp(lo + FLEX_BLOCK - 1, max=T - 1)


@functools.lru_cache(maxsize=16)
def _window_block_mask(T: int, window: int, device: str):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    lo, hi = _block_bounds(T, device)
    zero = torch.zeros_like(lo)
    return _block_mask(lo, hi, lo, hi, zero, zero, window, mask_mod, T)


def _varlen_block_mask(seq_id: torch.Tensor, window: Optional[int]):
    T = seq_id.shape[0]

    def mask_mod(b, h, q_idx, kv_idx):
        m = (q_idx >= kv_idx) & (seq_id[q_idx] == seq_id[kv_idx])
        if window is not None:
            m = m & (q_idx - kv_idx < window)
        return m

    lo, hi = _block_bounds(T, seq_id.device)
    return _block_mask(lo, hi, lo, hi, seq_id[lo], seq_id[hi], window, mask_mod, T)


class Attention(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int = 0, window: Optional[int] = None):
        super().__init__()
        self.config, self.layer_idx, self.window = config, layer_idx, window
        C, H, D = config.hidden_size, config.num_heads, config.head_dim
        self.num_heads, self.head_dim = H, D
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, H * D, bias=False)
        self.v_proj = nn.Linear(C, H * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.rotary = RotaryEmbedding(D, config.rope_theta)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        state: Optional[dict] = None,
        use_cache: bool = False,
        cu_seqlens: Optional[torch.Tensor] = None,
        offset: int = 0,  # position of x[:, 0] (tokens already in the cache)
        pad: Optional[torch.Tensor] = None,  # (B, T) bool, True at left padding
        reserve: int = 0,  # positions a global KV cache is allocated for at once (the prompt of a prefill in pieces)
        **_: Any,
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        B, T, _ = x.shape
        H, D, W = self.num_heads, self.head_dim, self.window
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, D)
        seq_id = None
        if cu_seqlens is not None:
            if state is not None or use_cache:
                raise NotImplementedError("Attention: cu_seqlens with a generation cache is not supported")
            if B != 1:
                raise ValueError(f"with cu_seqlens the batch size must be 1, got x {tuple(x.shape)}")
            seq_id, pos = varlen_positions(cu_seqlens.to(x.device), T)  # RoPE restarts in every sequence
        else:
            pos = torch.arange(offset, offset + T, device=x.device)
        cos, sin = self.rotary(pos)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)

        new_state = None
        if state is None:  # attend within x only
            if pad is not None:  # per-row key mask; a padding query sees itself (no empty softmax row, no NaN)
                mask = (_allowed(pos, pos, W)[None] & ~pad[:, None, :]) | torch.eye(T, dtype=torch.bool,
                                                                                     device=x.device)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
            elif W is None and seq_id is None:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif x.is_cuda:
                bm = _window_block_mask(T, W, str(x.device)) if seq_id is None else _varlen_block_mask(seq_id, W)
                o = _compiled_flex_attention()(q, k, v, block_mask=bm)
            else:
                mask = _allowed(pos, pos, W, seq_id, seq_id)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # read the cache: x continues it (one decoding token, or a piece of a prompt prefilled in pieces)
            if W is None:  # global: append the new keys in place first, then attend over the filled part
                new_state = state = self._append(state, k, v, pos, pad, reserve)
                n = state["len"]
                k_all, v_all = state["k"][:, :, :n].to(k.dtype), state["v"][:, :, :n].to(v.dtype)
                k_pos, k_pad = state["pos"][:n], state["pad"][:, :n]
            else:  # sliding window: the ring buffer (W slots) + the new keys
                k_all = torch.cat([state["k"].to(k.dtype), k], dim=2)
                v_all = torch.cat([state["v"].to(v.dtype), v], dim=2)
                k_pos = torch.cat([state["pos"], pos])
                k_pad = F.pad(state["pad"], (0, T)) if pad is None else torch.cat([state["pad"], pad], 1)
            L = k_all.shape[2]  # the new keys are the last T, in order
            if T > 1 and pad is None and not bool(k_pad.any()):
                # a piece without padding anywhere: the mask depends on positions only, so it is not built per row
                # (B x T x L booleans); global attention is causal with the diagonal at the bottom right
                mask = causal_lower_right(T, L) if W is None else _allowed(pos, k_pos, W)[None, None]
            else:
                mask = _allowed(pos, k_pos, W)[None] & ~k_pad[:, None, :]  # (B, T, keys), by position and padding
                if pad is not None:  # a padding query sees itself, as without a cache (no empty softmax row: NaN)
                    mask = mask | (torch.arange(L, device=x.device)[None, :] == (L - T) + torch.arange(
                        T, device=x.device)[:, None])[None]
                mask = mask[:, None]
            o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        y = self.o_proj(o.transpose(1, 2).reshape(B, T, H * D))
        if use_cache and new_state is None:
            new_state = self._update_cache(state, k, v, pos, pad, reserve)
        return y, (new_state if use_cache else None)

    @staticmethod
    def _append(state: Optional[dict], k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                pad: Optional[torch.Tensor] = None, reserve: int = 0) -> dict:
        """Global KV cache: buffers (B, H, capacity, D) filled up to state["len"], written in place; the capacity at
        least doubles when it runs out, so decoding n tokens copies O(n) elements in all (not O(n^2) as appending by
        concatenation would). Slots past "len" hold pos -1 (masked); "pad" (B, capacity) marks left padding (masked).
        ``reserve``: the capacity to allocate when it is at least what is needed (a prompt prefilled in pieces is
        allocated once at its length, not doubled piece by piece to up to twice that)."""
        B, H, T, D = k.shape
        n = 0 if state is None else state["len"]
        cap = 0 if state is None else state["k"].shape[2]
        if n + T > cap:
            new_cap = reserve if reserve >= n + T else max(n + T, 2 * cap, 64)
            grown = {"k": k.new_zeros(B, H, new_cap, D), "v": v.new_zeros(B, H, new_cap, D),
                     "pos": torch.full((new_cap,), -1, dtype=torch.long, device=k.device),
                     "pad": torch.zeros(B, new_cap, dtype=torch.bool, device=k.device), "len": n}
            if state is not None:
                for name in ("k", "v"):
                    grown[name][:, :, :n] = state[name][:, :, :n]
                grown["pos"][:n] = state["pos"][:n]
                grown["pad"][:, :n] = state["pad"][:, :n]
            state = grown
        state["k"][:, :, n:n + T] = k.to(state["k"].dtype)
        state["v"][:, :, n:n + T] = v.to(state["v"].dtype)
        state["pos"][n:n + T] = pos
        if pad is not None:  # slots past "len" are still False
            state["pad"][:, n:n + T] = pad
        state["len"] = n + T
        return state

    def _update_cache(self, state: Optional[dict], k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                      pad: Optional[torch.Tensor] = None, reserve: int = 0) -> dict:
        """k, v: (B, H, T, D) after RoPE; pos: (T,); pad: (B, T) bool or None."""
        W = self.window
        if W is None:  # global: keep everything
            return self._append(state, k, v, pos, pad, reserve)
        B, H, _, D = k.shape
        if state is None:  # ring buffer of W slots; pos -1 = empty
            state = {"k": k.new_zeros(B, H, W, D), "v": v.new_zeros(B, H, W, D),
                     "pos": torch.full((W,), -1, dtype=torch.long, device=k.device),
                     "pad": torch.zeros(B, W, dtype=torch.bool, device=k.device)}
        k, v, pos = k[:, :, -W:], v[:, :, -W:], pos[-W:]  # only the last W tokens can still be seen
        slots = pos % W
        return {"k": state["k"].index_copy(2, slots, k.to(state["k"].dtype)),
                "v": state["v"].index_copy(2, slots, v.to(state["v"].dtype)),
                "pos": state["pos"].index_copy(0, slots, pos),
                "pad": (state["pad"].index_fill(1, slots, False) if pad is None
                        else state["pad"].index_copy(1, slots, pad[:, -W:]))}

    # ---- static decoding state (deltanet/layers/static.py) ----
    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        """Global: keys/values for ``max_len`` positions (slot = position); sliding window: a ring of ``window``
        slots (slot = position % window).  ``valid`` (B, slots) is True where a slot holds a real token."""
        H, D = self.num_heads, self.head_dim
        L = max_len if self.window is None else self.window
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]).to(device)
        return {"k": torch.zeros(batch, H, L, D, device=device, dtype=dtype),
                "v": torch.zeros(batch, H, L, D, device=device, dtype=dtype),
                "valid": torch.zeros(batch, L, device=device, dtype=torch.bool),
                "weights": {"in": w}}  # (3HD, C): q, k, v in one product (deltanet/layers/static.py)

    def load_static_state(self, static: dict, state: dict) -> None:
        """From the prefill cache: the global buffer holds positions 0..len-1 in its first slots, the ring buffer has
        the static ring's layout already; padding and empty slots (pos -1) become invalid."""
        L = static["k"].shape[2]
        if self.window is None:
            n = state["len"]
            if n > L:
                raise ValueError(f"prompt of {n} tokens does not fit the static KV cache of {L} positions")
            k, v, pos, pad = state["k"][:, :, :n], state["v"][:, :, :n], state["pos"][:n], state["pad"][:, :n]
        else:
            k, v, pos, pad = state["k"], state["v"], state["pos"], state["pad"]
            n = L
        static["k"][:, :, :n].copy_(k)
        static["v"][:, :, :n].copy_(v)
        static["valid"].zero_()
        static["valid"][:, :n].copy_((pos >= 0)[None, :] & ~pad)

    def step(self, x: torch.Tensor, static: dict, pos: torch.Tensor) -> torch.Tensor:
        """x (B, 1, C) -> (B, 1, C): writes this token's key/value into its slot, then attends over all slots,
        masked by ``valid`` (every valid slot of the ring lies inside the window: it holds one of the last W)."""
        B = x.shape[0]
        H, D, W = self.num_heads, self.head_dim, self.window
        qkv = step_linear(x[:, 0], static["weights"]["in"]).view(B, 1, 3 * H, D)  # one product for q, k, v
        cos, sin = self.rotary(pos.view(1))
        qk = apply_rotary(qkv[:, :, :2 * H], cos, sin)  # q and k rotated together
        q, k, v = (t.transpose(1, 2) for t in (qk[:, :, :H], qk[:, :, H:], qkv[:, :, 2 * H:]))  # (B, H, 1, D)
        slot = pos.view(1) if W is None else torch.remainder(pos, W).view(1)
        kc, vc, valid = static["k"], static["v"], static["valid"]
        kc.index_copy_(2, slot, k.to(kc.dtype))
        vc.index_copy_(2, slot, v.to(vc.dtype))
        valid.index_fill_(1, slot, True)
        # (B, H, 1, L): one query against every slot, float32 softmax; invalid slots get -inf
        scores = torch.matmul(q, kc.transpose(-1, -2).to(q.dtype)).float() * D ** -0.5
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        o = torch.matmul(scores.softmax(-1).to(v.dtype), vc.to(v.dtype))  # (B, H, 1, D)
        return step_linear(o.transpose(1, 2).reshape(B, 1, H * D), self.o_proj.weight)  # (B, 1, C)
