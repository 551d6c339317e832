"""Segmented state walks: the two sequential stages spread over segments of a sequence (kernels/README.md, segmented walks).

The walks ``fwd_h`` and ``bwd_dhu`` run one program per (sequence, head, V block) over every chunk of a sequence.  A
long sequence with few heads gives few programs (the 340M model at T = 16384, batch 1: 8 heads x 4 V blocks = 32
programs on 132 SMs) and a long dependency chain each.  Both walks are affine in their state, per chunk
``S <- M_c S + b_c`` with ``M_c`` a [K, K] matrix acting from the left (``(I - K_c^T W_c)`` times the chunk's decay in
the forward, its transpose in the backward), so a run of chunks maps the state at its start to the state at its end by
``S_end = P S_start + Q``.  With the sequence cut into segments of whole chunks:

1. in parallel over segments, walk each one from a zero state (gives Q, [K, V]) and, with zero inputs, from the
   identity (gives P, [K, K]): the same kernel, on the segments as packed sequences, as one walk over the inputs
   with K zero columns appended when K + V <= 256;
2. chain the segments in order, ``S_{j+1} = P_j S_j + Q_j`` (a few small matmuls in float32, float64 for float32
   inputs);
3. walk each segment again from its true start state, storing the per-chunk states as the plain walk does.

That is about 2 + K / V times the walk's work, on (segments x) as many programs.  The chunks keep their order, so the
outputs (h, V', dh, dV') have the plain walk's layout and values up to rounding of the state sums.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
import triton

from .launch import ChunkMeta
from .utils import prepare_chunk_indices, prepare_chunk_offsets

__all__ = ["plan_segments", "segmented_fwd_h", "segmented_bwd_dhu"]

#: Fewest chunks per segment chosen automatically (below this the extra walks cost more than the parallelism wins).
MIN_AUTO_CHUNKS = 16


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs_wanted(device: torch.device) -> int:
    """Two programs per SM of the device (132 SMs, an H100/H200, when it is not a CUDA device)."""
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 132
    return 2 * sms


class SegmentPlan:
    """How a call's sequences are cut: ``seg_cu`` [S + 1] (token offsets of the S segments, in the flattened
    [1, B * T] layout) with its chunk tables (``chunks``), and per sequence its first segment and segment count."""

    def __init__(self, bounds: Tuple[int, ...], BT: int, chunks_per_segment: int, device: torch.device):
        step = chunks_per_segment * BT
        seg_cu: List[int] = [0]
        self.first: List[int] = []
        self.count: List[int] = []
        for bos, eos in zip(bounds[:-1], bounds[1:]):
            self.first.append(len(seg_cu) - 1)
            starts = list(range(bos, eos, step))
            seg_cu.extend(min(s + step, eos) for s in starts)
            self.count.append(len(starts))
        self.S = len(seg_cu) - 1
        self.seg_cu = torch.tensor(seg_cu, dtype=torch.int32, device=device)
        self.chunks = (prepare_chunk_indices(self.seg_cu, BT), prepare_chunk_offsets(self.seg_cu, BT))
        self.uniform = len(set(self.count)) == 1 and self.count[0] > 0

    def meta(self, q: torch.Tensor, v: torch.Tensor, m: ChunkMeta) -> ChunkMeta:
        """The :class:`ChunkMeta` of a walk over the segments, with q's and v's dims."""
        return ChunkMeta(q, v, self.seg_cu, m.BT, m.settings, chunks=self.chunks)


@functools.lru_cache(maxsize=64)
def _dense_plan(B: int, T: int, BT: int, chunks_per_segment: int, device: torch.device) -> SegmentPlan:
    """Plans of equal rows are made once: their tensors then cost no host-device copy (and no sync) per call."""
    return SegmentPlan(tuple(n * T for n in range(B + 1)), BT, chunks_per_segment, device)


def plan_segments(m: ChunkMeta, device: torch.device) -> Optional[SegmentPlan]:
    """The segment plan of a call, or None when its walks run unsegmented.

    ``settings.walk_segment``: 0 never segments; n >= 1 cuts every sequence into segments of n chunks; None (auto)
    segments when the walk has fewer programs (N x H x V blocks) than two per SM, into about as many segments per
    sequence as make up for it, each of at least ``MIN_AUTO_CHUNKS`` chunks.
    """
    want = m.settings.walk_segment
    if want == 0:
        return None
    if m.is_varlen:
        lens = (m.chunk_offsets[1:] - m.chunk_offsets[:-1]).max()
        max_chunks = int(lens) if m.N > 0 else 0
    else:
        max_chunks = triton.cdiv(m.T, m.BT)
    if want is None:
        programs = m.N * m.H * triton.cdiv(m.V, m.BVs)
        target = _programs_wanted(device)
        if programs >= target:
            return None
        per_seq = triton.cdiv(target, programs)
        want = max(MIN_AUTO_CHUNKS, triton.cdiv(max_chunks, per_seq))
    if want >= max_chunks:
        return None
    if m.is_varlen:
        return SegmentPlan(tuple(m.cu_seqlens.detach().to("cpu", torch.int64).tolist()), m.BT, want, device)
    return _dense_plan(m.B, m.T, m.BT, want, device)


def _flat(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[B, T, ...] -> [1, B * T, ...] (a view: the inputs are contiguous)."""
    return None if x is None else x.view(1, x.shape[0] * x.shape[1], *x.shape[2:])


def _eye_states(S: int, H: int, K: int, device: torch.device) -> torch.Tensor:
    return torch.eye(K, dtype=torch.float32, device=device).expand(S, H, K, K).contiguous()


def _chain(plan: SegmentPlan, P: torch.Tensor, Q: torch.Tensor, init: Optional[torch.Tensor], N: int,
           reverse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step 2: chain the segments of every sequence, ``S <- P_j S + Q_j``, in order (``reverse``: last to first).

    P: [S, H, K, K] float32, Q: [S, H, K, V] (float32 or float64, the dtype of the chain); init: [N, H, K, V] (the
    state entering each sequence) or None (zeros).  Returns (the state entering each segment [S, H, K, V], the state
    leaving each sequence [N, H, K, V]), in Q's dtype.
    """
    dt = Q.dtype
    H, K, V = Q.shape[1:]
    cur = init.to(dt).clone() if init is not None else Q.new_zeros(N, H, K, V)
    enter = torch.empty_like(Q)
    steps = max(plan.count, default=0)
    if plan.uniform:  # every sequence has the same number of segments: strided views, no gathers
        Pv, Qv, Ev = (x.view(N, steps, *x.shape[1:]) for x in (P, Q, enter))
        for r in range(steps):
            j = steps - 1 - r if reverse else r
            Ev[:, j] = cur
            cur = torch.matmul(Pv[:, j].to(dt), cur) + Qv[:, j]
        return enter, cur
    first = torch.tensor(plan.first, device=Q.device)
    count = torch.tensor(plan.count, device=Q.device)
    for r in range(steps):
        sel = torch.nonzero(count > r).squeeze(1)
        idx = first[sel] + ((count[sel] - 1 - r) if reverse else r)
        enter[idx] = cur[sel]
        cur[sel] = torch.matmul(P[idx].to(dt), cur[sel]) + Q[idx]
    return enter, cur


def _combine_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float32 else torch.float32


def _eye_right(S: int, H: int, K: int, V: int, device: torch.device) -> torch.Tensor:
    """[S, H, K, V + K] float32 states [0 | I]: the first V columns walk the real inputs, the last K the identity."""
    x = torch.zeros(S, H, K, V + K, dtype=torch.float32, device=device)
    x[..., V:] = torch.eye(K, dtype=torch.float32, device=device)
    return x


def _both_maps(walk, ms_args, mp_args, aug_args, V: int, fused: bool):
    """Step 1: (Q, P) of every segment, by one walk over [inputs | zeros] when ``fused`` (K + V <= 256: twice the
    programs in one launch), else by two walks.  Each ``*_args`` is a thunk of the walk's arguments."""
    if fused:
        final = walk(*aug_args())[2]
        return final[..., :V], final[..., V:]
    return walk(*ms_args())[2], walk(*mp_args())[2]


def segmented_fwd_h(plan: SegmentPlan, m: ChunkMeta, walk, k: torch.Tensor, w: Optional[torch.Tensor],
                    u: torch.Tensor, initial_state: Optional[torch.Tensor], output_final_state: bool,
                    g: Optional[torch.Tensor]):
    """:func:`chunk_h.fwd_h` by segments; ``walk(m, k, w, u, h0, final, g)`` is the plain walk's launcher."""
    kf, wf, uf, gf = _flat(k), _flat(w), _flat(u), _flat(g)
    ms = plan.meta(kf, uf, m)
    dev, S, H, K, V = k.device, plan.S, m.H, m.K, m.V

    def two_p():
        zeros = kf.new_zeros(kf.shape)  # no inputs: the walk of the identity gives P
        return (plan.meta(kf, zeros, m), kf, wf, zeros, _eye_states(S, H, K, dev),
                True, gf)

    def aug():
        ua = torch.cat([uf, uf.new_zeros(*uf.shape[:-1], K)], -1)
        return plan.meta(kf, ua, m), kf, wf, ua, _eye_right(S, H, K, V, dev), True, gf

    Q, P = _both_maps(walk, lambda: (ms, kf, wf, uf, None, True, gf), two_p, aug, V, K + V <= 256)
    enter, final = _chain(plan, P.contiguous(), Q.to(_combine_dtype(k)).contiguous(), initial_state, m.N,
                          reverse=False)
    h, v_new, _ = walk(ms, kf, wf, uf, enter.float(), False, gf)
    ht = final.float() if output_final_state else None
    return h, (v_new.view_as(u) if w is not None else u), ht


def segmented_bwd_dhu(plan: SegmentPlan, m: ChunkMeta, walk, q: torch.Tensor, k: torch.Tensor,
                      w: Optional[torch.Tensor], do: torch.Tensor, dht: Optional[torch.Tensor], scale: float,
                      need_dh0: bool, g: Optional[torch.Tensor]):
    """:func:`chunk_h.bwd_dhu` by segments; ``walk(m, q, k, w, do, dht, scale, need_dh0, g)`` is the plain walk."""
    qf, kf, wf, dof, gf = _flat(q), _flat(k), _flat(w), _flat(do), _flat(g)
    ms = plan.meta(qf, dof, m)
    dev, S, H, K, V = q.device, plan.S, m.H, m.K, m.V

    def two_p():
        zeros = kf.new_zeros(kf.shape)
        return (plan.meta(qf, zeros, m), qf, kf, wf, zeros, _eye_states(S, H, K, dev),
                scale, True, gf)

    def aug():
        da = torch.cat([dof, dof.new_zeros(*dof.shape[:-1], K)], -1)
        return (plan.meta(qf, da, m), qf, kf, wf, da, _eye_right(S, H, K, V, dev),
                scale, True, gf)

    Q, P = _both_maps(walk, lambda: (ms, qf, kf, wf, dof, None, scale, True, gf), two_p, aug, V, K + V <= 256)
    leave, dh0 = _chain(plan, P.contiguous(), Q.to(_combine_dtype(q)).contiguous(), dht, m.N, reverse=True)
    dv_new, dh, _ = walk(ms, qf, kf, wf, dof, leave.float(), scale, False, gf)
    return dv_new.view_as(do), dh, (dh0.float() if need_dh0 else None)
