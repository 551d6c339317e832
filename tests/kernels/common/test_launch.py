"""kernels/common/launch.py: the settings object, the context manager, and the launch (with stand-in kernels).

The settings must be validated, immutable, restored after a ``with`` block (also on an exception), and what they
say must reach the kernel launches: a recording stand-in wraps every stage kernel of a real (interpreted) call.
"""
import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see tests/kernels/conftest.py)

from kernels import ChunkSettings, KernelSettings, chunk_delta_rule, chunk_settings, current_chunk_settings  # noqa: E402
from kernels.common import chunk_h, chunk_o, launch, wy  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STAGES = {"wy_fwd": wy, "fwd_h": chunk_h, "fwd_o": chunk_o, "bwd_dv_local": chunk_h, "bwd_dhu": chunk_h,
          "bwd_dqkw": chunk_o, "wy_bwd": wy}


def test_defaults():
    s = ChunkSettings()
    assert s == current_chunk_settings()
    for name in launch.KERNELS:
        ks = s.kernel(name)
        assert ks.launch == (4, 2) and ks.tile is None and ks.tile_wide is None
        assert ks.launch_wide == ((8, 2) if name in ("fwd_h", "bwd_dhu") else None)
    assert (s.seq_bv, s.keep_states, s.fold_blocks, s.fp32_prec, s.blocked_inv) == (None, True, "auto", "tf32x3",
                                                                                     True)
    assert s.launch_for("fwd_h", 256, 64) == (8, 2) and s.launch_for("fwd_h", 128, 128) == (4, 2)
    # a grid of at most one program per SM: deeper load pipelines for the walks only, never at K or V > 128
    assert s.launch_for("fwd_h", 128, 128, small=True) == (4, 4)
    assert s.launch_for("bwd_dhu", 128, 128, small=True) == (4, 3)
    assert s.launch_for("fwd_h", 256, 64, small=True) == (8, 2) and s.launch_for("fwd_o", 128, 128, True) == (4, 2)
    assert s.keeps_states(256) and s.keeps_states(128)
    auto = s.replace(keep_states="auto")
    assert auto.keeps_states(256) and not auto.keeps_states(128)
    assert s.folds(4) and not s.folds(2)


@pytest.mark.parametrize("make,match", [
    (lambda: KernelSettings(launch=(3, 2)), r"launch: num_warps must be one of"),
    (lambda: KernelSettings(launch=(4, 0)), r"launch: num_stages must be >= 1"),
    (lambda: KernelSettings(launch=(4,)), r"launch must be \(num_warps, num_stages\)"),
    (lambda: KernelSettings(launch_wide=(4, 2.0)), r"launch_wide: num_stages must be an int"),
    (lambda: KernelSettings(tile=(48, 64)), r"tile: BK must be a power of two in \[16, 256\], got 48"),
    (lambda: KernelSettings(tile_wide=(64, 512)), r"tile_wide: BV must be a power of two"),
    (lambda: ChunkSettings(fwd_h=KernelSettings(tile=(64, 64))), r"fwd_h: the state walks take no tile"),
    (lambda: ChunkSettings(fwd_o={"launch": (5, 1)}), r"ChunkSettings.fwd_o.launch: num_warps must be one of"),
    (lambda: ChunkSettings(fwd_o={"lanch": (4, 1)}), r"ChunkSettings.fwd_o: unknown fields \['lanch'\]"),
    (lambda: ChunkSettings(fwd_o=(4, 2)), r"ChunkSettings.fwd_o must be a KernelSettings"),
    (lambda: ChunkSettings(seq_bv=24), r"seq_bv must be None or a power of two"),
    (lambda: ChunkSettings(keep_states="yes"), r"keep_states must be True, False or 'auto'"),
    (lambda: ChunkSettings(fold_blocks=1), r"fold_blocks must be True, False or 'auto'"),
    (lambda: ChunkSettings(fp32_prec="fp64"), r"fp32_prec must be one of"),
    (lambda: ChunkSettings(blocked_inv=1), r"blocked_inv must be a bool"),
    (lambda: ChunkSettings().replace(tiles={}), r"ChunkSettings has no field \['tiles'\]"),
    (lambda: ChunkSettings().kernel("fwd_x"), r"unknown kernel 'fwd_x'"),
])
def test_bad_settings_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_settings_are_immutable_and_mappings_convert():
    s = ChunkSettings(fwd_o={"launch": [8, 1], "tile": [64, 128]})
    assert s.fwd_o == KernelSettings(launch=(8, 1), tile=(64, 128)) and isinstance(s.fwd_o.launch, launch.Launch)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.keep_states = True
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.fwd_o.launch = (4, 2)
    assert hash(s) == hash(ChunkSettings(fwd_o=KernelSettings(launch=(8, 1), tile=(64, 128))))


def test_autotune_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DELTANET_AUTOTUNE", "1")
    assert ChunkSettings().autotune is True
    monkeypatch.setenv("DELTANET_AUTOTUNE", "0")
    assert ChunkSettings().autotune is False


def test_context_manager_nests_and_restores_on_exception():
    before = current_chunk_settings()
    with chunk_settings(keep_states=True) as outer:
        assert current_chunk_settings() is outer and outer.keep_states is True
        with pytest.raises(RuntimeError, match="boom"):
            with chunk_settings(fold_blocks=False, fp32_prec="ieee") as inner:
                assert current_chunk_settings() is inner
                assert (inner.keep_states, inner.fold_blocks, inner.fp32_prec) == (True, False, "ieee")
                raise RuntimeError("boom")
        assert current_chunk_settings() is outer
        with pytest.raises(ValueError, match="seq_bv"):  # a bad change raises before anything changes
            with chunk_settings(seq_bv=3):
                pass
        assert current_chunk_settings() is outer
        with chunk_settings(ChunkSettings(), blocked_inv=False) as whole:  # from a whole object
            assert whole.keep_states is True and whole.blocked_inv is False
    assert current_chunk_settings() is before


class Recorder:
    """Stand-in for a Triton kernel: records every launch (grid and keyword arguments), then runs the real one."""

    def __init__(self, name, kernel, log):
        self.name, self.kernel, self.log = name, kernel, log

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.log.append((self.name, grid, kw))
            return self.kernel[grid](*args, **kw)
        return run


@pytest.fixture
def recorded(monkeypatch, require_interpreter):
    log = []
    for name, mod in STAGES.items():
        attr = f"{name}_kernel"
        monkeypatch.setattr(mod, attr, Recorder(name, getattr(mod, attr), log))
    return log


def run_call(K, V, T=20, H=1, chunk_size=16, backward=True):
    g = torch.Generator().manual_seed(K + V)
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, H, K, generator=g), dim=-1).to(DEVICE) for _ in "qk")
    v = torch.randn(1, T, H, V, generator=g).to(DEVICE)
    beta = torch.rand(1, T, H, generator=g).to(DEVICE)
    xs = [x.requires_grad_() for x in (q, k, v, beta)]
    o, _ = chunk_delta_rule(*xs, chunk_size=chunk_size)
    if backward:
        o.sum().backward()
    return o


def test_changed_settings_reach_the_launches(recorded):
    """Launch, tile, fold, precision and inverse settings given to chunk_settings are what the kernels launch with;
    the backward, run after the block has ended, still uses the forward's settings."""
    changes = dict(wy_fwd=KernelSettings(launch=(8, 1)), fwd_o=KernelSettings(tile=(16, 16)),
                   bwd_dqkw=KernelSettings(launch=(2, 3), tile=(16, 32)), fold_blocks=True, fp32_prec="ieee",
                   blocked_inv=False, keep_states=True)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 20, 1, 32, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]
    beta = torch.rand(1, 20, 1, generator=g).to(DEVICE).requires_grad_()
    with chunk_settings(**changes):
        o, _ = chunk_delta_rule(xs[0], xs[1], xs[2], beta, chunk_size=32)
    n_fwd = len(recorded)
    o.sum().backward()
    by = {}
    for name, grid, kw in recorded:
        by.setdefault(name, []).append((grid, kw))
    assert [r[0] for r in recorded[:n_fwd]] == ["wy_fwd", "fwd_h", "fwd_o"]
    assert [r[0] for r in recorded[n_fwd:]] == ["wy_fwd", "bwd_dhu", "bwd_dqkw", "wy_bwd"]  # states kept: no fwd_h
    for grid, kw in by["wy_fwd"]:
        assert (kw["num_warps"], kw["num_stages"]) == (8, 1) and kw["BLOCKED_INV"] is False and kw["PREC"] == "ieee"
    (grid, kw), = by["fwd_o"]
    assert (kw["BK"], kw["BV"], kw["FOLD"]) == (16, 16, True) and grid == (2,)  # 1 chunk * 1 head * 2 V blocks
    (grid, kw), = by["bwd_dqkw"]
    assert (kw["num_warps"], kw["num_stages"], kw["BK"], kw["BV"], kw["FOLD"]) == (2, 3, 16, 32, True)
    (grid, kw), = by["fwd_h"]
    assert (kw["num_warps"], kw["num_stages"]) == (4, 4)  # unchanged entries keep their defaults (a one-program grid)


def test_wide_entries_and_state_block_reach_the_launches(recorded):
    """At K > 128 the walks take launch_wide, the state V block follows seq_bv, dv_local runs as its own kernel,
    and a tile_wide entry replaces the tile."""
    with chunk_settings(seq_bv=16, wy_bwd=KernelSettings(tile=(64, 64), tile_wide=(128, 16))):
        run_call(K=160, V=32)
    by = {name: kw for name, _, kw in recorded}
    assert (by["fwd_h"]["num_warps"], by["fwd_h"]["BV"], by["fwd_h"]["BK"]) == (8, 16, 64)
    assert (by["bwd_dhu"]["num_warps"], by["bwd_dhu"]["INLINE_DV"]) == (8, False) and "bwd_dv_local" in by
    assert (by["wy_bwd"]["BK"], by["wy_bwd"]["BV"]) == (128, 16)


class FakeKernel:
    """Stand-in kernel that fails with OutOfResources unless fits(num_warps, num_stages)."""

    def __init__(self, fits, calls):
        self.fits, self.calls = fits, calls

    def __getitem__(self, grid):
        def run(*args, num_warps, num_stages, **consts):
            self.calls.append((num_warps, num_stages))
            if not self.fits(num_warps, num_stages):
                raise OutOfResources(245760, 232448, "shared memory")
        return run


def test_launch_falls_back_when_shared_memory_runs_out(monkeypatch):
    """A setting that needs more shared memory than the GPU has is retried with fewer stages, then 4 warps; the
    setting that fitted is remembered per kernel, setting, constexprs and dtype; an unavoidable error is raised."""
    monkeypatch.setattr(launch, "_state", launch._LaunchState())
    s, calls = ChunkSettings(), []
    x = torch.zeros(1, dtype=torch.float32)
    launch.launch(s, "bwd_dhu", FakeKernel(lambda w, st: st == 1, calls), (1,), x, K=256, V=256)
    assert calls == [(8, 2), (8, 1)]
    calls.clear()
    launch.launch(s, "bwd_dhu", FakeKernel(lambda w, st: st == 1, calls), (1,), x, K=256, V=256)
    assert calls == [(8, 1)]  # remembered
    calls.clear()
    launch.launch(s, "bwd_dhu", FakeKernel(lambda w, st: True, calls), (1,), x.bfloat16(), K=256, V=256)
    assert calls == [(8, 2)]  # another dtype is another key
    calls.clear()
    launch.launch(s.replace(bwd_dhu=KernelSettings(launch_wide=(8, 3))), "bwd_dhu",
                  FakeKernel(lambda w, st: True, calls), (1,), x, K=256, V=256)
    assert calls == [(8, 3)]  # another setting asked for is another key
    calls.clear()
    launch.launch(s, "fwd_h", FakeKernel(lambda w, st: w == 4, calls), (1,), x, K=64, V=64, BT=64)
    assert calls == [(4, 4)]  # a grid of one program: the walk's launch_small
    calls.clear()
    launch.launch(s, "fwd_h", FakeKernel(lambda w, st: w == 4 and st == 1, calls), (1,), x, K=200, V=64)
    assert calls == [(8, 2), (8, 1), (4, 1)]
    with pytest.raises(OutOfResources):
        launch.launch(s, "wy_fwd", FakeKernel(lambda w, st: False, calls), (1,), x, K=64, V=32)


def test_autotune_runs_through_triton_autotune_and_falls_back_on_failure(monkeypatch):
    """With autotune on (compiled kernels), a launch goes through triton.autotune over TUNE_CONFIGS keyed on every
    constexpr; if autotuning fails it warns and the fixed settings are used from then on."""
    monkeypatch.setattr(launch, "_state", launch._LaunchState())
    monkeypatch.setattr(launch, "triton_interpret_enabled", lambda: False)
    built, used, calls = [], [], []

    def fake_autotune(configs, key):
        def wrap(kernel):
            built.append(([(c.num_warps, c.num_stages) for c in configs], key))

            class Tuned:
                cache = {}

                def __getitem__(self, grid):
                    def run(*args, **consts):
                        used.append(consts)
                        if consts["K"] == 99:
                            raise RuntimeError("no config fits")
                    return run
            return Tuned()
        return wrap

    monkeypatch.setattr(launch.triton, "autotune", fake_autotune)
    s = ChunkSettings(autotune=True)
    x = torch.zeros(1)
    kernel = FakeKernel(lambda w, st: True, calls)
    launch.launch(s, "fwd_h", kernel, (1,), x, K=64, V=64, BT=64)
    launch.launch(s, "fwd_h", kernel, (1,), x, K=32, V=64, BT=64)
    assert built == [([(4, 2), (8, 2), (2, 2)], ["BT", "K", "V"])] and len(used) == 2 and calls == []
    launch.launch(s, "fwd_o", kernel, (1,), x, K=64, V=64)
    assert built[1][0] == [(4, 2), (8, 2), (2, 2), (8, 1)] and launch.tuned_configs() == {"fwd_h": {}, "fwd_o": {}}
    with pytest.warns(RuntimeWarning, match="autotuning wy_fwd failed"):
        launch.launch(s, "wy_fwd", kernel, (1,), x, K=99, V=64)
    assert calls == [(4, 2)]  # the fixed setting, at once
    launch.launch(s, "fwd_h", kernel, (1,), x, K=64, V=64, BT=64)
    assert calls == [(4, 2), (4, 4)] and len(used) == 4  # no more autotuning (fwd_h: a one-program grid)


@pytest.mark.parametrize("B,H,V,bv", [(1, 8, 128, 16), (2, 8, 128, 16), (4, 8, 128, 32), (1, 2, 256, 64)])
def test_walk_block_follows_the_grid(B, H, V, bv):
    """seq_bv None: BV 16 while N H cdiv(V, 16) programs still fit one wave of SMs, else 32 (K <= 128); 64 above."""
    K = 200 if V == 256 else 64
    q = torch.empty(B, 64, H, K, device=DEVICE)
    v = torch.empty(B, 64, H, V, device=DEVICE)
    sms = launch.sm_count(q)
    m = launch.ChunkMeta(q, v, None, 64)
    expect = bv if DEVICE == "cpu" else (64 if K > 128 else (16 if B * H * V // 16 <= sms else 32))
    assert m.BVs == expect
    assert launch.ChunkMeta(q, v, None, 64, ChunkSettings(seq_bv=128)).BVs == min(128, V)
