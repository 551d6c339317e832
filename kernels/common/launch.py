"""Launch configuration of the chunkwise kernels: settings, block sizes, grids, and the launch itself.

* :class:`ChunkSettings` is the one tuning object: an immutable, validated dataclass holding, per kernel, its
  ``(num_warps, num_stages)`` and optional ``(BK, BV)`` tile (:class:`KernelSettings`), and the algorithm switches
  (state V block, kept states, folded grids, float32 dot precision, blocked inverse, autotuning).  Its defaults are
  the measured choices described in ``kernels/README.md``.
* :func:`chunk_settings` applies changed settings for a ``with`` block and restores the previous ones on exit (also
  on an exception); :func:`current_chunk_settings` returns the active object.  A call of ``chunk_delta_rule`` reads
  the active settings once, in its forward, and its backward uses the same object.
* :class:`ChunkMeta` holds the shapes and block sizes of one call; :func:`tile_sizes` and :func:`block_grid` give a
  chunk-parallel kernel's tile and grid; :func:`launch` starts a kernel with its settings, falls back to a smaller
  setting when the GPU's shared memory is too small, and runs the opt-in autotuner.

Example::

    >>> import kernels
    >>> with kernels.chunk_settings(fwd_h=kernels.KernelSettings(launch=(8, 2)), keep_states=True):
    ...     o, _ = kernels.chunk_delta_rule(q, k, v, beta)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import types
import warnings
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional, Tuple, Union

import torch
import triton
from triton.runtime.errors import OutOfResources

from .utils import prepare_chunk_indices, prepare_chunk_offsets, triton_interpret_enabled

__all__ = [
    "KERNELS",
    "SEQUENTIAL_KERNELS",
    "ChunkMeta",
    "ChunkSettings",
    "KernelSettings",
    "Launch",
    "block_grid",
    "chunk_settings",
    "current_chunk_settings",
    "is_wide",
    "launch",
    "tile_sizes",
    "tuned_configs",
]

#: The chunkwise kernels by name, in the order a forward and backward call runs them.
KERNELS = ("wy_fwd", "fwd_h", "fwd_o", "bwd_dv_local", "bwd_dhu", "bwd_dqkw", "wy_bwd")
#: The two walks over the chunks of a sequence; their blocks come from ``seq_bv``, not from a tile.
SEQUENTIAL_KERNELS = ("fwd_h", "bwd_dhu")
#: Candidate ``(num_warps, num_stages)`` of the opt-in autotuner, per kind of kernel.
TUNE_CONFIGS = types.MappingProxyType({
    "parallel": ((4, 2), (8, 2), (2, 2), (8, 1)),  # chunk-parallel kernels (their K/V loops are unrolled)
    "sequential": ((4, 2), (8, 2), (2, 2)),  # the two walks over chunks
})
_NUM_WARPS = (1, 2, 4, 8, 16, 32)
_FP32_PRECS = ("tf32x3", "ieee", "tf32")
_AUTO = (True, False, "auto")


def is_wide(K: int, V: int) -> bool:
    """Whether a call with key dim K and value dim V takes the ``launch_wide`` / ``tile_wide`` entries."""
    return K > 128 or V > 128


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


class Launch(NamedTuple):
    """Launch setting of one kernel: warps per program and software-pipelining stages."""

    num_warps: int
    num_stages: int


def _as_launch(x, what: str) -> Launch:
    try:
        num_warps, num_stages = x
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (num_warps, num_stages), got {x!r}") from None
    for name, n in (("num_warps", num_warps), ("num_stages", num_stages)):
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"{what}: {name} must be an int, got {n!r}")
    if num_warps not in _NUM_WARPS:
        raise ValueError(f"{what}: num_warps must be one of {_NUM_WARPS}, got {num_warps}")
    if num_stages < 1:
        raise ValueError(f"{what}: num_stages must be >= 1, got {num_stages}")
    return Launch(num_warps, num_stages)


def _as_tile(x, what: str) -> Optional[Tuple[int, int]]:
    if x is None:
        return None
    try:
        BK, BV = x
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (BK, BV) or None, got {x!r}") from None
    for name, n in (("BK", BK), ("BV", BV)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 16 or n > 256 or n & (n - 1):
            raise ValueError(f"{what}: {name} must be a power of two in [16, 256], got {n!r}")
    return BK, BV


@dataclass(frozen=True)
class KernelSettings:
    """Settings of one kernel.

    Attributes:
        launch: ``(num_warps, num_stages)`` of every call.
        launch_wide: instead of ``launch`` for calls with K or V > 128 (None: ``launch``).
        tile: ``(BK, BV)`` block sizes of a chunk-parallel kernel, each a power of two in [16, 256] and capped at the
            padded K, V of a call (None: 64 x 64).  Not for the two state walks (``fwd_h``, ``bwd_dhu``).
        tile_wide: instead of ``tile`` for calls with K or V > 128 (None: ``tile``).
        launch_small: instead of ``launch`` (K, V <= 128) when the grid has at most one program per SM (None:
            ``launch``); the state walks use it, whose time on few programs is the latency of their loads.
    """

    launch: Launch = Launch(4, 2)
    launch_wide: Optional[Launch] = None
    tile: Optional[Tuple[int, int]] = None
    tile_wide: Optional[Tuple[int, int]] = None
    launch_small: Optional[Launch] = None

    def __post_init__(self):
        object.__setattr__(self, "launch", _as_launch(self.launch, "launch"))
        if self.launch_wide is not None:
            object.__setattr__(self, "launch_wide", _as_launch(self.launch_wide, "launch_wide"))
        if self.launch_small is not None:
            object.__setattr__(self, "launch_small", _as_launch(self.launch_small, "launch_small"))
        object.__setattr__(self, "tile", _as_tile(self.tile, "tile"))
        object.__setattr__(self, "tile_wide", _as_tile(self.tile_wide, "tile_wide"))


def _autotune_from_env() -> bool:
    return os.environ.get("DELTANET_AUTOTUNE", "0") == "1"


# the state walks: 8 warps at K or V > 128, deeper load pipelines on a grid of at most one wave (kernels/README.md)
_FWD_WALK = KernelSettings(launch_wide=Launch(8, 2), launch_small=Launch(4, 4))
_BWD_WALK = KernelSettings(launch_wide=Launch(8, 2), launch_small=Launch(4, 3))


@dataclass(frozen=True)
class ChunkSettings:
    """Tuning of the chunkwise kernels: one entry per kernel plus the algorithm switches.

    Immutable and validated on construction (a bad entry raises ValueError naming it).  Change settings for a block
    with :func:`chunk_settings`, or build a new object with :meth:`replace`.  The defaults are the measured choices
    of ``kernels/README.md``.

    Attributes:
        wy_fwd, fwd_h, fwd_o, bwd_dv_local, bwd_dhu, bwd_dqkw, wy_bwd: :class:`KernelSettings` per kernel (a mapping
            with its fields is accepted too).  The state walks ``fwd_h`` and ``bwd_dhu`` run with 8 warps at K or
            V > 128.
        seq_bv: V block of the two state walks, a power of two in [16, 256] capped at the padded V; None: 64 for
            K > 128; for K <= 128, 16 when the walk's grid at that block still has at most one program per SM,
            else 32.
        keep_states: whether the backward reuses the forward's chunk states h and V' instead of recomputing them:
            True (the default: one state walk fewer, h and V' kept until the backward), False, or "auto" (only
            for K > 128, the memory-saving choice at K <= 128).  Measured in kernels/README.md, "Kept states".
        fold_blocks: whether a chunk-parallel kernel with several V (fwd_o, bwd_dv_local) or K (bwd_dqkw) blocks
            per chunk runs them on adjacent programs of a 1-D grid: True, False or "auto" (at more than two blocks).
        fp32_prec: ``tl.dot`` input precision of float32 calls: "tf32x3" (float32-accurate), "ieee" or "tf32"
            (10-bit mantissa).  bfloat16 and float16 calls run their dots at their own precision.
        blocked_inv: (I + L)^-1 by 16 x 16 diagonal blocks and a merge (False: row-by-row substitution).
        autotune: pick each kernel's launch setting with ``triton.autotune`` among ``TUNE_CONFIGS`` (compiled CUDA
            only); default from the environment, ``DELTANET_AUTOTUNE=1``.
    """

    wy_fwd: KernelSettings = KernelSettings()
    fwd_h: KernelSettings = _FWD_WALK
    fwd_o: KernelSettings = KernelSettings()
    bwd_dv_local: KernelSettings = KernelSettings()
    bwd_dhu: KernelSettings = _BWD_WALK
    bwd_dqkw: KernelSettings = KernelSettings()
    wy_bwd: KernelSettings = KernelSettings()
    seq_bv: Optional[int] = None
    keep_states: Union[bool, str] = True
    fold_blocks: Union[bool, str] = "auto"
    fp32_prec: str = "tf32x3"
    blocked_inv: bool = True
    autotune: bool = field(default_factory=_autotune_from_env)

    def __post_init__(self):
        for name in KERNELS:
            ks = getattr(self, name)
            if isinstance(ks, dict):
                unknown = set(ks) - {f.name for f in dataclasses.fields(KernelSettings)}
                if unknown:
                    raise ValueError(f"ChunkSettings.{name}: unknown fields {sorted(unknown)}")
                try:
                    ks = KernelSettings(**ks)
                except ValueError as e:
                    raise ValueError(f"ChunkSettings.{name}.{e}") from None
                object.__setattr__(self, name, ks)
            elif not isinstance(ks, KernelSettings):
                raise ValueError(f"ChunkSettings.{name} must be a KernelSettings, got {type(ks).__name__}")
            if name in SEQUENTIAL_KERNELS and (ks.tile is not None or ks.tile_wide is not None):
                raise ValueError(f"ChunkSettings.{name}: the state walks take no tile (their V block is seq_bv), "
                                 f"got tile={ks.tile}, tile_wide={ks.tile_wide}")
        s = self.seq_bv
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 16 or s > 256 or s & (s - 1)):
            raise ValueError(f"ChunkSettings.seq_bv must be None or a power of two in [16, 256], got {s!r}")
        for name in ("keep_states", "fold_blocks"):
            if getattr(self, name) not in _AUTO or not isinstance(getattr(self, name), (bool, str)):
                raise ValueError(f"ChunkSettings.{name} must be True, False or 'auto', got {getattr(self, name)!r}")
        if self.fp32_prec not in _FP32_PRECS:
            raise ValueError(f"ChunkSettings.fp32_prec must be one of {_FP32_PRECS}, got {self.fp32_prec!r}")
        for name in ("blocked_inv", "autotune"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ChunkSettings.{name} must be a bool, got {getattr(self, name)!r}")

    def replace(self, **changes) -> "ChunkSettings":
        """A copy with the given fields changed (validated); ValueError for an unknown field name."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"ChunkSettings has no field {unknown}; fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def kernel(self, name: str) -> KernelSettings:
        """The :class:`KernelSettings` of kernel `name` (one of KERNELS)."""
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; kernels: {KERNELS}")
        return getattr(self, name)

    def launch_for(self, name: str, K: int, V: int, small: bool = False) -> Launch:
        """``(num_warps, num_stages)`` of kernel `name` for a call with dims K, V (`small`: a grid of at most one
        program per SM)."""
        ks = self.kernel(name)
        if is_wide(K, V):
            return ks.launch_wide if ks.launch_wide is not None else ks.launch
        return ks.launch_small if small and ks.launch_small is not None else ks.launch

    def tile_for(self, name: str, K: int, V: int) -> Optional[Tuple[int, int]]:
        """The ``(BK, BV)`` asked for kernel `name` at dims K, V (before capping), or None for the default."""
        ks = self.kernel(name)
        return ks.tile_wide if is_wide(K, V) and ks.tile_wide is not None else ks.tile

    def keeps_states(self, K: int) -> bool:
        """Whether the backward of a call with key dim K reuses the forward's h and V'."""
        return self.keep_states is True or (self.keep_states == "auto" and K > 128)

    def folds(self, nb: int) -> bool:
        """Whether a chunk-parallel kernel with `nb` blocks per chunk and head runs on the folded 1-D grid."""
        return self.fold_blocks is True or (self.fold_blocks == "auto" and nb > 2)

    def as_dict(self) -> dict:
        """Plain nested dict (JSON-ready) of every setting, for benchmark reports."""
        return dataclasses.asdict(self)


_active = ChunkSettings()


def current_chunk_settings() -> ChunkSettings:
    """The settings that a chunkwise call started now uses."""
    return _active


@contextlib.contextmanager
def chunk_settings(settings: Optional[ChunkSettings] = None, /, **changes) -> Iterator[ChunkSettings]:
    """Use other settings for the calls started inside the ``with`` block; the previous ones come back on exit.

    Args:
        settings: a whole :class:`ChunkSettings` to start from (default: the active one).
        **changes: fields to change on top of it, as in :meth:`ChunkSettings.replace`, e.g. ``keep_states=False`` or
            ``bwd_dqkw=KernelSettings(launch=(8, 2), tile=(64, 128))``.

    Yields the settings in force.  Raises ValueError (before anything changes) for an unknown or bad entry.
    The active settings are one per process: nested blocks stack, threads share them.
    """
    global _active
    base = _active if settings is None else settings
    if not isinstance(base, ChunkSettings):
        raise ValueError(f"settings must be a ChunkSettings, got {type(base).__name__}")
    new = base.replace(**changes)
    previous, _active = _active, new
    try:
        yield new
    finally:
        _active = previous


class ChunkMeta:
    """Shapes, block sizes and settings of one chunkwise call, shared by its forward and backward launchers.

    Args:
        q: [B, T, H, K] queries (only shape and dtype are read); v: [B, T, H, V] values.
        cu_seqlens: optional [N + 1] int32/int64 cumulative sequence lengths (validated by the caller).
        chunk_size: BT, tokens per chunk (16, 32 or 64).
        settings: the :class:`ChunkSettings` to launch with (default: the active ones).

    Attributes: B, T, H, K, V, BT; N sequences; NT chunks over all sequences; chunk_indices [NT, 2] and
    chunk_offsets [N + 1] (varlen only, else None); prec, the tl.dot precision; BK, BV, the default block sizes of the
    chunk-parallel kernels (64, capped at the padded K, V); BKs, BVs, the state blocks of the two walks (all of K in
    one block up to K = 128, else 64-row blocks; BVs from ``seq_bv``).
    """

    def __init__(self, q: torch.Tensor, v: torch.Tensor, cu_seqlens: Optional[torch.Tensor], chunk_size: int,
                 settings: Optional[ChunkSettings] = None):
        self.settings = _active if settings is None else settings
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.BT = chunk_size
        self.is_varlen = cu_seqlens is not None
        if self.is_varlen:
            self.N = cu_seqlens.numel() - 1
            self.chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
            self.chunk_offsets = prepare_chunk_offsets(cu_seqlens, chunk_size)
            self.NT = self.chunk_indices.shape[0]
        else:
            self.N = self.B
            self.chunk_indices = self.chunk_offsets = None
            self.NT = self.B * triton.cdiv(self.T, chunk_size)
        self.cu_seqlens = cu_seqlens
        self.prec = self.settings.fp32_prec if q.dtype == torch.float32 else "tf32"
        self.BK = min(64, _pow2(self.K))  # K block: <= 4 of them cover K <= 256
        self.BV = min(64, _pow2(self.V))
        self.BKs = _pow2(self.K) if self.K <= 128 else 64
        seq_bv = self.settings.seq_bv
        if seq_bv is None:
            seq_bv = 64 if self.K > 128 else (16 if self.N * self.H * triton.cdiv(self.V, 16) <= sm_count(q) else 32)
        self.BVs = min(seq_bv, _pow2(self.V))


def sm_count(x: torch.Tensor) -> int:
    """Streaming multiprocessors of x's GPU (132 for CPU tensors under the interpreter, an H100/H200's count)."""
    if x.device.type != "cuda":
        return 132
    return _sm_counts.setdefault(x.device.index, torch.cuda.get_device_properties(x.device).multi_processor_count)


_sm_counts: dict = {}


def tile_sizes(m: ChunkMeta, name: str) -> Tuple[int, int]:
    """(BK, BV) of chunk-parallel kernel `name`: its tile setting capped at the padded K, V, else (m.BK, m.BV).

    Raises ValueError for a tile giving more than 4 K or V blocks per chunk (kernels/README.md, tile refusal).
    """
    t = m.settings.tile_for(name, m.K, m.V)
    if t is None:
        return m.BK, m.BV
    BK, BV = min(t[0], _pow2(m.K)), min(t[1], _pow2(m.V))
    if triton.cdiv(m.K, BK) > 4 or triton.cdiv(m.V, BV) > 4:
        raise ValueError(f"chunk_delta_rule: tile {t} for {name} gives more than 4 blocks per chunk at K={m.K}, "
                         f"V={m.V}; use BK >= K/4 and BV >= V/4")
    return BK, BV


def block_grid(m: ChunkMeta, nb: int):
    """(grid, fold) of a chunk-parallel kernel with `nb` blocks per chunk and head: folded, ``(NT * H * nb,)`` with
    a chunk's blocks on adjacent programs; else ``(NT * H, nb)``."""
    fold = m.settings.folds(nb)
    return ((m.NT * m.H * nb,) if fold else (m.NT * m.H, nb)), fold


@dataclass
class _LaunchState:
    """What launches learned in this process: settings that replaced one that did not fit in shared memory, per
    (kernel, setting asked for, constexprs, dtype); the autotuner wrappers per kernel; whether autotuning failed."""

    fallback: dict = field(default_factory=dict)
    tuned: dict = field(default_factory=dict)
    autotune_failed: bool = False


_state = _LaunchState()


def tuned_configs() -> dict:
    """What the autotuner picked so far: {kernel: {key: 'num_warps=.., num_stages=..'}} (for benchmark reports)."""
    return {name: {str(k): f"num_warps={c.num_warps}, num_stages={c.num_stages}" for k, c in t.cache.items()}
            for name, t in _state.tuned.items()}


def _smaller_launch(cfg: Launch) -> Optional[Launch]:
    """The next setting to try after an out-of-shared-memory error: fewer stages, then 4 warps; None at the end."""
    if cfg.num_stages > 1:
        return Launch(cfg.num_warps, cfg.num_stages - 1)
    if cfg.num_warps > 4:
        return Launch(4, 1)
    return None


def launch(settings: ChunkSettings, name: str, kernel, grid, *args, **consts) -> None:
    """Launch `kernel` (the Triton kernel of stage `name`) on `grid` with `args` and constexprs `consts` (which
    include K and V).

    The setting is ``settings.launch_for(name, K, V, small)``, small when the grid has at most one program per SM.
    A setting that needs more shared memory than the GPU has
    raises OutOfResources before the kernel runs; it is retried with :func:`_smaller_launch` and the setting that
    fitted is remembered per (kernel, setting asked for, constexprs, dtype of the first argument).  With
    ``settings.autotune`` (compiled CUDA only) the kernel runs through a ``triton.autotune`` wrapper built once per
    kernel and keyed on every constexpr; if autotuning fails it warns and the fixed settings are used from then on.
    """
    if settings.autotune and not _state.autotune_failed and not triton_interpret_enabled():
        tuned = _state.tuned.get(name)
        if tuned is None:
            kind = "sequential" if name in SEQUENTIAL_KERNELS else "parallel"
            configs = [triton.Config({}, num_warps=w, num_stages=st) for w, st in TUNE_CONFIGS[kind]]
            tuned = _state.tuned[name] = triton.autotune(configs=configs, key=sorted(consts))(kernel)
        try:
            tuned[grid](*args, **consts)
            return
        except Exception as e:  # noqa: BLE001 - an autotuner fault must not stop training: warn, use fixed settings
            _state.autotune_failed = True
            warnings.warn(f"chunk_delta_rule: autotuning {name} failed ({type(e).__name__}: {e}); using the fixed "
                          "launch settings from now on", RuntimeWarning)
    small = (settings.kernel(name).launch_small is not None  # only the walks have one: no grid test elsewhere
             and math.prod(grid) <= sm_count(next(a for a in args if isinstance(a, torch.Tensor))))
    cfg = settings.launch_for(name, consts["K"], consts["V"], small)
    key = None
    if _state.fallback:  # the key is built only once some launch has fallen back
        key = (name, cfg, tuple(sorted(consts.items())), args[0].dtype)
        cfg = _state.fallback.get(key, cfg)
    while True:
        try:
            kernel[grid](*args, **consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            return
        except OutOfResources:  # raised before the kernel runs: nothing was written, so a retry is safe
            smaller = _smaller_launch(cfg)
            if smaller is None:
                raise
            if key is None:
                key = (name, cfg, tuple(sorted(consts.items())), args[0].dtype)
            cfg = _state.fallback[key] = smaller
