"""Within-chunk cumulative sum of per-token log decays (the G of the gated chunk stages).

For a chunk of BT tokens starting at t0, ``G[t0 + i] = sum_{j <= i} g[t0 + j]``: the log of the decay from the
state before the chunk to token i.  Chunks never cross sequence boundaries (varlen through ``cu_seqlens``).  The
backward of this sum is the reverse cumulative sum within the chunk: the gated delta rule takes it where the gradient
of G is complete (``wy.wy_bwd_kernel``), the ops without a WY representation here (``reverse=True``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import ChunkMeta
from .tiles import chunk_coords

__all__ = ["chunk_local_cumsum", "chunk_local_cumsum_kernel"]


@triton.jit
def chunk_local_cumsum_kernel(
    g, G,
    cu_seqlens, chunk_indices,
    T,
    H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr = False,
):
    """G = cumsum of g over each chunk (REVERSE: from the chunk's last token back), in float32.
    Grid: (total chunks * H,)."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    o_t = tl.arange(0, BT)
    m_t = o_t < T_seq - i_c * BT
    b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_G = tl.cumsum(b_g, 0)
    if REVERSE:
        b_G = tl.sum(b_g, 0) - b_G + b_g
    tl.store(G + (t0 + o_t) * H + i_h, b_G, mask=m_t)


def chunk_local_cumsum(m: ChunkMeta, g: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Within-chunk cumulative sum.

    Args: m: the call's :class:`ChunkMeta`; g: [B, T, H] per-token values (float32 or q's dtype), contiguous;
    reverse: sum from each token to the chunk's end instead (the backward of the forward sum).
    Returns: G [B, T, H] float32.
    """
    G = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    # one BT-vector per program, no tile to tune: launched directly rather than through ChunkSettings
    chunk_local_cumsum_kernel[(m.NT * m.H,)](g, G, m.cu_seqlens, m.chunk_indices, m.T, H=m.H, BT=m.BT,
                                             IS_VARLEN=m.is_varlen, REVERSE=reverse, num_warps=1)
    return G
