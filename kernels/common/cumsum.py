"""Within-chunk cumulative sum of per-token log decays (the G of the gated chunk stages).

For a chunk of BT tokens starting at t0, ``G[t0 + i] = sum_{j <= i} g[t0 + j]``: the log of the decay from the
state before the chunk to token i.  Chunks never cross sequence boundaries (varlen through ``cu_seqlens``).  The
backward of this sum, a reverse cumulative sum within the chunk, is done where the gradient of G is complete
(``wy.wy_bwd_kernel``).
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
    H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """G = cumsum of g over each chunk, in float32.  Grid: (total chunks * H,)."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    o_t = tl.arange(0, BT)
    m_t = o_t < T_seq - i_c * BT
    b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    tl.store(G + (t0 + o_t) * H + i_h, tl.cumsum(b_g, 0), mask=m_t)


def chunk_local_cumsum(m: ChunkMeta, g: torch.Tensor) -> torch.Tensor:
    """Within-chunk cumulative sum.

    Args: m: the call's :class:`ChunkMeta`; g: [B, T, H] per-token log decays (float32 or q's dtype), contiguous.
    Returns: G [B, T, H] float32.
    """
    G = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    # one BT-vector per program, no tile to tune: launched directly rather than through ChunkSettings
    chunk_local_cumsum_kernel[(m.NT * m.H,)](g, G, m.cu_seqlens, m.chunk_indices, m.T, H=m.H, BT=m.BT,
                                             IS_VARLEN=m.is_varlen, num_warps=1)
    return G
