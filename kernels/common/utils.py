"""Input validation and variable-length helpers shared by the Triton kernels.

Every public kernel entry point calls :func:`validate_inputs` (shapes, dtypes, devices, ``cu_seqlens``) and
:func:`check_triton_runnable` (Triton only runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``)
before launching anything, so that bad input raises a ``ValueError`` naming the argument instead of a Triton crash.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
CHUNK_SIZES = (16, 32, 64)


def _shape(x: torch.Tensor) -> str:
    return f"[{', '.join(str(s) for s in x.shape)}]"


def validate_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> int:
    """Check the arguments of a delta-rule kernel and return N, the number of sequences.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]. One dtype among bfloat16, float16, float32 for all four,
            all on one device. K and V in [16, 256].
        initial_state: optional [N, H, K, V] (any of the supported dtypes), N = B, or len(cu_seqlens) - 1.
        cu_seqlens: optional 1-D int32/int64 [N + 1], starting at 0, non-decreasing, ending at T; requires B == 1.
        chunk_size: optional, one of 16, 32, 64 (only the chunkwise kernels pass it).

    Contiguity policy: the inputs need not be contiguous; the kernels call ``.contiguous()`` on them (a no-op when
    they already are), so this function does not reject strided views.

    Raises:
        ValueError naming the offending argument and its shape/dtype/device.
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D [B, T, H, K], got shape {_shape(q)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K] = {_shape(q)}, got {_shape(k)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] with (B, T, H) = ({B}, {T}, {H}), got shape {_shape(v)}")
    V = v.shape[-1]
    if tuple(beta.shape) != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = [{B}, {T}, {H}], got shape {_shape(beta)}")
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"empty input: q has shape {_shape(q)}")
    if not (MIN_HEAD_DIM <= K <= MAX_HEAD_DIM):
        raise ValueError(f"key dim K={K} (q shape {_shape(q)}) must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    if not (MIN_HEAD_DIM <= V <= MAX_HEAD_DIM):
        raise ValueError(f"value dim V={V} (v shape {_shape(v)}) must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")

    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q dtype {q.dtype} not supported; use one of bfloat16, float16, float32")
    for name, x in (("k", k), ("v", v), ("beta", beta)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name} dtype {x.dtype} differs from q dtype {q.dtype}; q, k, v, beta must share one dtype")
    for name, x in (("k", k), ("v", v), ("beta", beta)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; all inputs must be on one device")

    if chunk_size is not None and chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")

    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise ValueError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D [N + 1] with N >= 1, got shape {_shape(cu_seqlens)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens dtype must be int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
        if B != 1:
            raise ValueError(f"cu_seqlens packs sequences into B = 1, but q has shape {_shape(q)} (B = {B})")
        cs = cu_seqlens.detach().to("cpu", torch.int64)
        if int(cs[0]) != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {int(cs[0])}")
        if int(cs[-1]) != T:
            raise ValueError(f"cu_seqlens must end at T = {T} (q shape {_shape(q)}), got {int(cs[-1])}")
        if bool((cs[1:] < cs[:-1]).any()):
            raise ValueError(f"cu_seqlens must be monotone non-decreasing, got {cs.tolist()}")
        N = cu_seqlens.numel() - 1
    else:
        N = B

    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise ValueError(f"initial_state must be a torch.Tensor, got {type(initial_state).__name__}")
        if tuple(initial_state.shape) != (N, H, K, V):
            raise ValueError(
                f"initial_state must be [N, H, K, V] = [{N}, {H}, {K}, {V}], got shape {_shape(initial_state)}"
            )
        if initial_state.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"initial_state dtype {initial_state.dtype} not supported; use bfloat16, float16 or float32")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}")
    return N


def triton_interpret_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` (Triton kernels then run on CPU tensors through the interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_runnable(*tensors: Optional[torch.Tensor]) -> None:
    """Raise ValueError unless Triton can launch on these tensors: CUDA tensors, or any tensor under TRITON_INTERPRET=1."""
    if triton_interpret_enabled():
        return
    for x in tensors:
        if x is not None and not x.is_cuda:
            raise ValueError(
                f"Triton kernels need CUDA tensors (got a tensor on {x.device}); on CPU use "
                "kernels.naive_recurrent_delta_rule / kernels.naive_chunk_delta_rule, or set TRITON_INTERPRET=1"
            )


def triton_runnable(*tensors: Optional[torch.Tensor]) -> bool:
    """Boolean form of :func:`check_triton_runnable`."""
    try:
        check_triton_runnable(*tensors)
    except ValueError:
        return False
    return True


def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """For packed sequences, list every chunk as (sequence index, chunk index within that sequence).

    Chunks never cross sequence boundaries: a sequence of length L gets ceil(L / chunk_size) chunks (0 for L = 0).
    Returns int32 [NT_total, 2] on cu_seqlens' device.
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    n_chunks = (lens + chunk_size - 1) // chunk_size
    seq_ids = torch.repeat_interleave(torch.arange(len(lens), device=cu_seqlens.device), n_chunks)
    starts = torch.cumsum(n_chunks, 0) - n_chunks
    chunk_ids = torch.arange(int(n_chunks.sum()), device=cu_seqlens.device) - starts[seq_ids]
    return torch.stack([seq_ids, chunk_ids], 1).to(torch.int32).contiguous()


def prepare_chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Cumulative chunk counts per sequence: int32 [N + 1], entry n is the first global chunk of sequence n."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    n_chunks = (lens + chunk_size - 1) // chunk_size
    return torch.cat([n_chunks.new_zeros(1), torch.cumsum(n_chunks, 0)]).to(torch.int32).contiguous()
