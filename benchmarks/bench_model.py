"""Question: how fast does a training step of our DeltaNet run, against fla's DeltaNet model, our Transformer++ and
our hybrids, at a fixed number of tokens per step and growing T?  And how much memory does it take?

    python benchmarks/bench_model.py --preset 340M --out benchmarks/results
    python benchmarks/bench_model.py --preset 1.3B --lengths 2048x8 8192x2 16384x1 --out DIR
    python benchmarks/bench_model.py --preset 340M --lengths 2048x8 --profile --out DIR     # + top-10 CUDA kernels
    python benchmarks/bench_model.py --dry-run --out /tmp/bench                             # tiny, on CPU

One table over several commands (each starts no new cell after 480 s; repeat the second until no cell reads
``skipped (time)`` or ``killed``, then add the profile; a resumed command may also list more models or lengths):

    python benchmarks/bench_model.py --preset 340M --max-seconds 480 --out benchmarks/results
    python benchmarks/bench_model.py --preset 340M --max-seconds 480 --resume --out benchmarks/results
    python benchmarks/bench_model.py --preset 340M --resume --profile --out benchmarks/results

Models (``--models``, all by default): ``deltanet`` (ours, fused glue: the default on CUDA), ``deltanet_plain`` (ours,
``fused=False``: the plain PyTorch glue around the same Triton delta rule), ``deltanet_keepconv`` (fused, but the
short convolutions' outputs kept for the backward instead of recomputed: ``recompute_conv=False``), ``fla_deltanet``
(``fla.models.DeltaNetForCausalLM`` with the same sizes, when fla is installed; skipped with a note otherwise),
``transformer`` (our Transformer++), ``deltanet_hybrid_swa``, ``deltanet_hybrid_global``, and (named with
``--models``) ``gated_deltanet``, ``retnet``, ``gla``, ``mamba``.  All run in this process, one after another, on the
same random token ids.  ``<model>@graph`` (e.g. ``deltanet@graph``, CUDA only) is the same model with its whole step
(forward, backward, clipping, a capturable fused AdamW with a tensor lr) captured once into a CUDA graph after the
warm-up steps and replayed: set beside the eager column it shows how much of the eager step waits on the host.  A
model whose step cannot be captured gets an error cell.

Setup of every step: float32 weights under bf16 autocast, fused AdamW (lr 1e-4), gradient-norm clipping at 1.0; the
time is the median of ``--steps`` (10) per-step times after ``--warmup`` (4) warm-up steps (CUDA events between the
steps, which run back to back as in training; the md also shows the fastest and slowest step, the JSON the
wall-clock mean);
peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, AdamW state and
activations).

MFU = model FLOPs / step time / ``--peak-tflops`` (989: H100/H200 bf16 dense).  Model FLOPs per step:
``6 * (params - embedding) * tokens`` (every matmul weight, the LM head included, forward + backward) plus, per
mixer layer and batch row, forward + backward (3x the forward):
softmax attention ``3 * 4 * H * D * sum_t min(t + 1, window)`` (QK^T and PV over the visible keys);
delta rule ``3 * T * H * (6 * K * V + C * (2 * K + V))`` with chunk C (Q S, W S, K^T U' per token, and the causal
halves of Q K^T, (Q K^T) U' and K K^T inside the chunk), also for Gated DeltaNet and RetNet (V = 2 K); GLA (K = D / 2)
``3 * T * H * (4 * K * V + C * (K + V))`` (Q S and K^T V per token, the causal halves of A and A V); Mamba's scan
``3 * T * 6 * E * N`` per block (inner channels E, state size N; two blocks per layer).

Outputs in ``--out``: ``bench_model.md`` (tables + ratios), ``bench_model.json``, ``bench_model.png`` (tokens/s and
peak memory against T), and with ``--profile`` ``bench_model_profile.md`` (top-10 kernels of one step per model; on
the GPU also its kernel launches and the share of the table's step time spent in kernels, which is low when the step
waits on the host).
Each records the command, GPU, torch, triton and fla versions.

A table filled over several commands (the first step of each model compiles its kernels, fla's also autotunes, so a
full table takes longer than one command may run): the three outputs are written after every cell (model, T, B),
a cell about to run first as ``started``; an out-of-memory cell is recorded as OOM and the sweep goes on.
``--max-seconds S`` starts no new cell, nor the profile (a note says so), after S seconds from the start of the
script: the cells not started are written as ``skipped (time)``.  ``--resume`` keeps the cells already in ``--out``'s
``bench_model.json`` (measured, OOM, or an error), also those of models or lengths this command does not list, and
runs only the others: ``skipped (time)`` ones, new ones, and a ``started`` one, whose process died inside it: it is
reported as ``killed (did not finish)`` and run again (once; killed twice, it stays killed).  The JSON's
``meta["command"]`` holds every command behind the table, joined with `` && ``, and each row's ``command`` the index
(from 1) of the one that wrote it, shown as [n] in the md.  A resume refuses a table measured with another preset,
device, torch, triton or fla version, ``--warmup``, ``--steps``, setup or ``--peak-tflops``.  ``--resume
--remeasure`` runs the cells it lists again even where the table has them (one column after a change to that model,
say); the others stay, and a note names the cells measured again.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deltanet import PRESETS, DeltaNetConfig, DeltaNetForCausalLM  # noqa: E402
from benchmarks.sweep import (JOIN, KILLED, SKIPPED, STARTED, Deadline, Rows, check_same,  # noqa: E402
                              command_line, commands, split)

OURS = {"deltanet": dict(family="deltanet"), "deltanet_plain": dict(family="deltanet", fused=False),
        "deltanet_keepconv": dict(family="deltanet", recompute_conv=False),
        "transformer": dict(family="transformer"), "deltanet_hybrid_swa": dict(family="deltanet_hybrid_swa"),
        "deltanet_hybrid_global": dict(family="deltanet_hybrid_global"),
        "gated_deltanet": dict(family="gated_deltanet"), "retnet": dict(family="retnet"), "gla": dict(family="gla"),
        "mamba": dict(family="mamba")}
MODELS = ("deltanet", "deltanet_plain", "deltanet_keepconv", "fla_deltanet", "transformer", "deltanet_hybrid_swa",
          "deltanet_hybrid_global", "gated_deltanet", "retnet", "gla", "mamba")
DEFAULT_MODELS = ("deltanet", "deltanet_plain", "fla_deltanet", "transformer", "deltanet_hybrid_swa",
                  "deltanet_hybrid_global")
DEFAULT_LENGTHS = ("2048x8", "8192x2", "16384x1")
DRY_SIZES = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, attn_window=32)


def parse_length(s: str) -> tuple[int, int]:
    try:
        T, B = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a length is TxB, e.g. 2048x8, got {s!r}") from None
    if T < 2 or B < 1:
        raise argparse.ArgumentTypeError(f"need T >= 2 and B >= 1, got {s!r}")
    return T, B


# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------

def our_config(name: str, preset: Optional[str]) -> DeltaNetConfig:
    if preset is None:  # dry run
        return DeltaNetConfig(**{**DRY_SIZES, **OURS[name]})
    return DeltaNetConfig.from_preset(preset, **OURS[name])


def fla_version() -> Optional[str]:
    try:
        import fla
    except Exception:  # not installed, or fails to import on this machine
        return None
    return getattr(fla, "__version__", "unknown")


def build_fla(cfg: DeltaNetConfig) -> torch.nn.Module:
    """fla's DeltaNet LM with our sizes: silu + L2 q/k, short conv 4, beta, no gate, output RMSNorm, SwiGLU width."""
    from fla.models import DeltaNetConfig as FlaConfig, DeltaNetForCausalLM as FlaLM
    want = dict(attn_mode="chunk", vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers, num_heads=cfg.num_heads, expand_k=1, expand_v=1,
                use_gate=cfg.use_output_gate, use_short_conv=cfg.use_short_conv, conv_size=cfg.conv_size,
                use_beta=cfg.use_beta, use_output_norm=True, qk_norm=cfg.qk_norm, qk_activation=cfg.qk_activation,
                intermediate_size=cfg.intermediate_size, hidden_act="swish", norm_eps=cfg.norm_eps,
                tie_word_embeddings=False, initializer_range=cfg.initializer_range)
    known = set(inspect.signature(FlaConfig.__init__).parameters)
    return FlaLM(FlaConfig(**{k: v for k, v in want.items() if k in known}))


GRAPH = "@graph"  # model-name suffix: the step captured into a CUDA graph and replayed


def base_model(name: str) -> str:
    return name[:-len(GRAPH)] if name.endswith(GRAPH) else name


def model_name(s: str) -> str:
    """argparse type of --models: one of MODELS, optionally with the @graph suffix."""
    if base_model(s) not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {s!r}: one of {', '.join(MODELS)}, each optionally with "
                                         f"the suffix {GRAPH}")
    return s


def build(name: str, preset: Optional[str]) -> tuple[torch.nn.Module, int, DeltaNetConfig]:
    """(model, embedding parameter count, our config of the same sizes)."""
    name = base_model(name)
    if name == "fla_deltanet":
        cfg = our_config("deltanet", preset)
        model = build_fla(cfg)
        return model, model.get_input_embeddings().weight.numel(), cfg
    cfg = our_config(name, preset)
    model = DeltaNetForCausalLM(cfg)
    return model, model.model.embeddings.weight.numel(), cfg


def mixer_flops(cfg: DeltaNetConfig, T: int, B: int) -> float:
    """Forward + backward FLOPs of the token mixers beyond their projections (see the module docstring)."""
    H, D = cfg.num_heads, cfg.head_dim
    total = 0.0
    for i in range(cfg.num_layers):
        if cfg.family == "mamba":  # two blocks per layer; the scan: ~6 FLOPs per inner channel and state entry
            total += 2 * 3 * T * 6 * cfg.ssm_expand * cfg.hidden_size * cfg.ssm_state_size
        elif cfg.is_attention_layer(i):
            w = cfg.attn_window or T
            pairs = sum(min(t + 1, w) for t in range(T)) if w < T else T * (T + 1) / 2
            total += 3 * 4 * H * D * pairs
        elif cfg.family == "gla":  # no W S, no K K^T; key dim D / 2 (deltanet/layers/gla.py)
            K = D // 2
            total += 3 * T * H * (4 * K * D + cfg.chunk_size * (K + D))
        else:  # the delta rule's count; the gated and scalar-decay forms are counted the same
            V = cfg.retnet_value_factor * D if cfg.family == "retnet" else D  # RetNet: V = 2 K by default
            total += 3 * T * H * (6 * D * V + cfg.chunk_size * (2 * D + V))
    return total * B


# ---------------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------------

def make_step(model: torch.nn.Module, ids: torch.Tensor, opt: torch.optim.Optimizer,
              device: str, zero_grad: bool = True, autocast_cache: bool = True) -> Callable[[], torch.Tensor]:
    def step() -> float:
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda", cache_enabled=autocast_cache):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()
    return step


def make_graph_step(model: torch.nn.Module, ids: torch.Tensor, opt: torch.optim.Optimizer,
                    warmup: int) -> Callable[[], torch.Tensor]:
    """The step of :func:`make_step` captured into one CUDA graph: ``warmup`` eager steps on a side stream (compiling
    kernels, allocating AdamW's state), then one capture; the returned step replays it.  AdamW turns capturable
    with its lr as a device tensor; the gradients live in the graph's pool (they are None at the capture, so each
    replay writes them anew); autocast's cast cache is off, so the captured casts of the weights rerun every replay."""
    for group in opt.param_groups:
        group["capturable"] = True
        group["lr"] = torch.tensor(float(group["lr"]), device=ids.device)
    eager = make_step(model, ids, opt, "cuda", autocast_cache=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            eager()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = make_step(model, ids, opt, "cuda", zero_grad=False, autocast_cache=False)()

    def step() -> torch.Tensor:
        graph.replay()
        return loss
    step.graph = graph  # kept alive with the step
    return step


def model_step(name: str, model: torch.nn.Module, ids: torch.Tensor, opt: torch.optim.Optimizer, device: str,
               warmup: int) -> Callable[[], torch.Tensor]:
    """The training step of model `name`: eager, or captured for a ``@graph`` name."""
    if name.endswith(GRAPH):
        return make_graph_step(model, ids, opt, warmup)
    return make_step(model, ids, opt, device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(step: Callable[[], torch.Tensor], steps: int,
                device: str) -> tuple[list[float], float, torch.Tensor]:
    """Milliseconds of each of ``steps`` steps, the wall-clock start and the last loss.  On CUDA, between events recorded on the
    stream after each step: the GPU's timeline, gaps where it waits on the host included, with no synchronisation
    between steps (the host runs ahead as in training).  On CPU, the wall clock per step."""
    loss = None
    if device == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        t0 = time.perf_counter()
        events[0].record()
        for e in events[1:]:
            loss = step()
            e.record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) for a, b in zip(events, events[1:])]
    else:
        t0, times = time.perf_counter(), []
        for _ in range(steps):
            t = time.perf_counter()
            loss = step()
            times.append(1e3 * (time.perf_counter() - t))
    return times, t0, loss


def bench_one(name: str, preset: Optional[str], T: int, B: int, warmup: int, steps: int, device: str,
              peak_tflops: float) -> dict[str, Any]:
    torch.manual_seed(0)
    model, n_embed, cfg = build(name, preset)
    model = model.to(device)
    n = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=device, generator=None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device == "cuda")
    step = model_step(name, model, ids, opt, device, warmup)
    for _ in range(warmup):
        step()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms, t0, loss = timed_steps(step, steps, device)
    wall = (time.perf_counter() - t0) / steps
    sec = statistics.median(step_ms) / 1e3
    tokens = B * T
    flops = 6 * (n - n_embed) * tokens + mixer_flops(cfg, T, B)
    res = {"model": name, "T": T, "B": B, "params": n, "ms": 1e3 * sec, "ms_min": min(step_ms),
           "ms_max": max(step_ms), "ms_mean_wall": 1e3 * wall, "tokens_per_s": tokens / sec,
           "model_tflops": flops / sec / 1e12, "mfu": flops / sec / 1e12 / peak_tflops,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
           "loss": float(loss)}
    del model, opt, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


ALL_KERNELS = "(all kernels of the step)"  # the last row of a profile: every kernel of the step


def profile_one(name: str, preset: Optional[str], T: int, B: int, device: str, top: int = 10) -> list[dict]:
    """Top ``top`` kernels (self CUDA time) of one training step after 3 warm-up steps."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    model, _, cfg = build(name, preset)
    model = model.to(device)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    step = make_step(model, ids, opt, device)
    for _ in range(3):
        step()
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    rows: dict[str, list[float]] = {}
    if device == "cuda":  # every kernel (and memcpy/memset) the step ran on the GPU, by name
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                r = rows.setdefault(e.name, [0, 0.0])
                r[0] += 1
                r[1] += float(e.time_range.elapsed_us())
    else:  # CPU dry run: self times of the ops, so nested ops are not counted twice
        rows = {e.key: [e.count, float(e.self_cpu_time_total)] for e in prof.key_averages()}
    total = sum(v[1] for v in rows.values()) or 1.0
    launches = int(sum(v[0] for v in rows.values()))
    out = [{"kernel": k, "calls": int(v[0]), "ms": v[1] / 1e3, "share": v[1] / total}
           for k, v in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]]
    del model, opt, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out + [{"kernel": ALL_KERNELS, "calls": launches, "ms": total / 1e3, "share": 1.0}]


def busy_line(kernel_ms: float, launches: int, step_ms: Optional[float]) -> str:
    """How much of a step the GPU spends in kernels: the profiled step's kernel time against the table's step time
    (measured without the profiler).  A share well under 1 means the step waits on the host (launches, Python)."""
    line = f"{launches} kernel launches, {kernel_ms:.1f} ms of kernels"
    if step_ms:
        line += (f"; the step takes {step_ms:.1f} ms in the table, so the GPU runs kernels for "
                 f"{100 * kernel_ms / step_ms:.0f}% of it")
    return line + "."


# ---------------------------------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------------------------------

def _get(rows: list[dict], model: str, T: int, B: int) -> Optional[dict]:
    """The measured row of a cell, or None (not run yet, skipped, killed, out of memory)."""
    return next((r for r in rows if (r["model"], r["T"], r["B"]) == (model, T, B) and "tokens_per_s" in r), None)


def _unmeasured(rows: list[dict], model: str, T: int, B: int) -> str:
    """What a cell without a measurement shows: its error (OOM), its status (skipped (time), ...) or -."""
    r = next((r for r in rows if (r["model"], r["T"], r["B"]) == (model, T, B)), None)
    return "-" if r is None else r.get("error") or r.get("status") or "-"


def tables(rows: list[dict], models: list[str], lengths: list[tuple[int, int]], marks: bool = False) -> str:
    """Tokens/s (MFU) and peak memory per (T, B) and model, parameters, and the ratios of the cells measured.  With
    ``marks`` each cell ends in [n]: the index of the command that measured it (rows without one: the first)."""
    head = "| (T, B) | " + " | ".join(models) + " |\n|---|" + "---|" * len(models) + "\n"
    speed, mem, spread = head, head, head
    for T, B in lengths:
        cells_s, cells_m, cells_t = [], [], []
        for m in models:
            r = _get(rows, m, T, B)
            if r is None:
                cells_s.append(_unmeasured(rows, m, T, B))
                cells_m.append("-")
                cells_t.append("-")
                continue
            mark = f" [{r.get('command', 1)}]" if marks else ""
            cells_s.append(f"{r['tokens_per_s'] / 1e3:.1f}K ({100 * r['mfu']:.1f}%){mark}")
            cells_m.append("-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}")
            cells_t.append(f"{r['ms']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f})" if "ms_min" in r else
                           f"{r['ms']:.1f} (mean)")
        speed += f"| {T}, {B} | " + " | ".join(cells_s) + " |\n"
        mem += f"| {T}, {B} | " + " | ".join(cells_m) + " |\n"
        spread += f"| {T}, {B} | " + " | ".join(cells_t) + " |\n"
    params = " | ".join(f"{m}: {r['params'] / 1e6:.1f}M" for m in models
                        if (r := next((x for x in rows if x["model"] == m and "params" in x), None)))
    text = ("tokens/s (MFU)" + (", [n]: measured by command n" if marks else "") + "\n\n" + speed
            + "\nstep time (ms): median (fastest-slowest step)\n\n" + spread
            + "\npeak memory (GiB)\n\n" + mem + f"\nparameters: {params or '-'}\n")
    ratios = []
    for T, B in lengths:
        ours = _get(rows, "deltanet", T, B)
        for other, target in (("fla_deltanet", 1.3), ("transformer", 1.0), ("deltanet_plain", None)):
            o = _get(rows, other, T, B)
            if ours and o:
                goal = f" (target >= {target})" if target else ""
                ratios.append(f"- T = {T}: deltanet / {other} tokens/s {ours['tokens_per_s'] / o['tokens_per_s']:.2f}"
                              f"{goal}")
        fla, tr = _get(rows, "fla_deltanet", T, B), _get(rows, "transformer", T, B)
        if ours and fla and ours["peak_mem_gib"] is not None:
            ratios.append(f"- T = {T}: deltanet / fla_deltanet peak memory "
                          f"{ours['peak_mem_gib'] / fla['peak_mem_gib']:.2f} (target <= 1)")
        for hyb in ("deltanet_hybrid_swa", "deltanet_hybrid_global"):
            h = _get(rows, hyb, T, B)
            if h and tr:
                ratios.append(f"- T = {T}: {hyb} / transformer tokens/s {h['tokens_per_s'] / tr['tokens_per_s']:.2f}"
                              + (" (target >= 1)" if T >= 8192 else ""))
        for m in models:  # a captured step against the same model's eager step: the share that waits on the host
            g, e = _get(rows, m, T, B), _get(rows, base_model(m), T, B)
            if m.endswith(GRAPH) and g and e:
                ratios.append(f"- T = {T}: {m} / {base_model(m)} tokens/s {g['tokens_per_s'] / e['tokens_per_s']:.2f}")
    return text + ("\nratios\n\n" + "\n".join(ratios) + "\n" if ratios else "")


def plot(rows: list[dict], models: list[str], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in models:
        rs = sorted((r for r in rows if r["model"] == m and "tokens_per_s" in r), key=lambda r: r["T"])
        if not rs:
            continue
        a1.plot([r["T"] for r in rs], [r["tokens_per_s"] / 1e3 for r in rs], marker="o", label=m)
        if rs[0]["peak_mem_gib"] is not None:
            a2.plot([r["T"] for r in rs], [r["peak_mem_gib"] for r in rs], marker="o", label=m)
    for a, y in ((a1, "tokens/s (thousands)"), (a2, "peak memory (GiB)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("sequence length T (tokens per step fixed)")
        a.set_ylabel(y)
        a.grid(alpha=0.3)
    if a1.lines:  # none when no cell is measured yet
        a1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# what a resumed command must share with the table it adds to (setup holds warmup and steps for older JSONs)
SAME = ("preset", "device", "torch", "triton", "fla", "warmup", "steps", "setup", "peak_tflops")
PROFILE_NOT_RUN = "profile not run"


def _unique(xs) -> list:
    return list(dict.fromkeys(xs))


def main(argv: Optional[list[str]] = None) -> dict:
    deadline = Deadline(None)  # the time box counts from the start of the script
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="340M", choices=sorted(PRESETS))
    p.add_argument("--lengths", nargs="+", type=parse_length, default=None,
                   help="TxB pairs (default 2048x8 8192x2 16384x1: 16K tokens per step)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), type=model_name,
                   help=f"any of {' '.join(MODELS)}, each optionally with the suffix {GRAPH} (a CUDA-graph step); "
                        "default: " + " ".join(DEFAULT_MODELS))
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per cell (default 4; dry run 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 10; dry run 2)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--profile", action="store_true", help="also write the top kernels of one step per model")
    p.add_argument("--profile-top", type=int, default=10, help="how many kernels the profile lists (default 10)")
    p.add_argument("--profile-length", type=parse_length, default=None, help="TxB of the profiled step (default: "
                   "the first length)")
    p.add_argument("--max-seconds", type=float, default=None, help="start no new cell (nor the profile) after this "
                   "many seconds from the start; the cells not started are written as skipped (time)")
    p.add_argument("--resume", action="store_true", help="keep the cells already in --out's bench_model.json "
                   "(measured, OOM or error) and run only the others: skipped ones, new ones, and ones whose process "
                   "died (killed (did not finish): run again once)")
    p.add_argument("--remeasure", action="store_true", help="with --resume: run this command's cells again even "
                   "where the table has them (after a code change, say); an earlier row stays in the table until this "
                   "command reaches its cell")
    p.add_argument("--dry-run", action="store_true", help="tiny models on CPU (torch path), 1 + 2 steps unless "
                   "--warmup/--steps say otherwise: checks the script, measures nothing")
    p.add_argument("--out", required=True, help="directory for bench_model.md/.json/.png")
    a = p.parse_args(argv)
    if a.remeasure and not a.resume:
        p.error("--remeasure replaces cells of an earlier table: it needs --resume")
    deadline.max_seconds = a.max_seconds
    device = "cpu" if a.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("needs a CUDA device (or --dry-run)")
    graphed = [m for m in a.models if m.endswith(GRAPH)]
    if graphed and device != "cuda":
        p.error(f"{', '.join(graphed)}: a CUDA-graph step needs a CUDA device (not --dry-run)")
    preset = None if a.dry_run else a.preset
    lengths = a.lengths or ([(64, 2), (128, 1)] if a.dry_run else [parse_length(s) for s in DEFAULT_LENGTHS])
    warmup = a.warmup if a.warmup is not None else 1 if a.dry_run else 4
    steps = a.steps if a.steps is not None else 2 if a.dry_run else 10
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton
    meta = {"command": command_line("bench_model.py", argv),
            "preset": "dry-run (tiny, CPU)" if a.dry_run else a.preset,
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "fla": fla_version(),
            "setup": ("fp32 weights, " + ("no autocast, AdamW" if a.dry_run else "bf16 autocast, fused AdamW")
                      + f", clip 1.0, median of {steps} per-step times after {warmup} warm-up"),
            "peak_tflops": a.peak_tflops,
            "warmup": warmup, "steps": steps}
    models = [m for m in a.models if base_model(m) != "fla_deltanet" or meta["fla"] is not None]
    notes = [] if len(models) == len(a.models) else ["fla is not installed here: fla_deltanet skipped"]
    cells = [(m, T, B) for T, B in lengths for m in models]
    res: dict[str, Any] = {"meta": meta, "notes": notes, "results": []}
    kept: list[dict] = []
    done: dict = {}
    retry: dict = {}
    earlier: list[dict] = []  # the earlier table's rows, in its order: its columns and lines come first
    if a.resume and (out / "bench_model.json").exists():
        prev = json.loads((out / "bench_model.json").read_text())
        earlier = prev["results"]
        check_same(prev["meta"], meta, SAME, out / "bench_model.json")
        meta["command"] = prev["meta"]["command"] + JOIN + meta["command"]  # every command behind the table
        notes[:] = _unique(prev.get("notes", []) + notes)
        for k in ("plot", "profile"):  # kept until this command writes its own
            if k in prev:
                res[k] = prev[k]
        # a cell killed twice is kept as killed: it would only take the whole of every later command
        kept, done, retry = split(prev["results"], lambda r: (r["model"], r["T"], r["B"]), set(cells),
                                    max_attempts=2)
    table_rows = Rows(kept, cells, {**retry, **done})  # the earlier cells, on disk from the first write
    n_cmd = len(commands(meta["command"]))  # this command's index, from 1, recorded in every row it writes
    again = {}  # --remeasure: the measured cells run again, their earlier rows kept until then
    if a.remeasure:
        again, done = done, {}
        if again:
            notes.append(f"command {n_cmd} measured again (--remeasure) the cells it lists: "
                         + ", ".join(f"{m} ({T}, {B})" for m, T, B in again))

    def write() -> None:  # after every cell, so a run cut short keeps what it measured
        rows = res["results"] = table_rows.list()
        (out / "bench_model.json").write_text(json.dumps(res, indent=2))
        cmds = commands(meta["command"])
        md = [f"# bench_model.py: training step, {meta['preset']}", ""]
        md += (["    " + cmds[0]] if len(cmds) == 1 else
               ["Commands behind this table, in order:", ""] + [f"    {i}: {c}" for i, c in enumerate(cmds, 1)])
        md += ["", f"{meta['device']}; torch {meta['torch']}, triton {meta['triton']}, fla {meta['fla'] or '-'}; "
               f"{meta['setup']}; MFU against {a.peak_tflops:g} TFLOP/s (FLOPs: see the script's docstring).", ""]
        md += [f"Note: {n}" for n in notes] + ([""] if notes else [])
        table_models = _unique([r["model"] for r in earlier] + models)  # an earlier command's models stay too
        table_lengths = _unique([(r["T"], r["B"]) for r in earlier] + list(lengths))
        md.append(tables(rows, table_models, table_lengths, marks=len(cmds) > 1))
        (out / "bench_model.md").write_text("\n".join(md))
        if plot(rows, table_models, out / "bench_model.png", f"training step, {meta['preset']}, {meta['device']}"):
            res["plot"] = "bench_model.png"

    for cell in cells:
        m, T, B = cell
        if cell in done:
            continue
        killed = retry.get(cell)
        if deadline.expired():  # a killed cell stays killed, to be run by a later command
            table_rows[cell] = (again.get(cell) or killed
                                or {"model": m, "T": T, "B": B, "status": SKIPPED, "command": n_cmd})
            write()
            continue
        if killed:
            notes.append(f"{m} ({T}, {B}): {KILLED} in command {killed.get('command', 1)}, started again in "
                         f"command {n_cmd}")
            print(f"{m} T={T} B={B}: {KILLED} in command {killed.get('command', 1)}; running it again",
                  file=sys.stderr)
        # on disk while it runs: a resumed command finds it killed if the process dies inside it
        table_rows[cell] = {"model": m, "T": T, "B": B, "status": STARTED, "command": n_cmd,
                            "attempts": killed.get("attempts", 1) + 1 if killed else 1}
        write()
        try:
            r = bench_one(m, preset, T, B, warmup, steps, device, a.peak_tflops)
        except RuntimeError as e:  # out of memory, or a step that cannot be captured: the cell says why
            oom = isinstance(e, torch.cuda.OutOfMemoryError)
            if not (oom or m.endswith(GRAPH)):
                raise
            r = {"model": m, "T": T, "B": B,
                 "error": "OOM" if oom else f"capture failed: {type(e).__name__}: {str(e)[:200]}"}
            print(f"{m} T={T}: {e}", file=sys.stderr)
            gc.collect()
            torch.cuda.empty_cache()
        r["command"] = n_cmd
        table_rows[cell] = r
        print(json.dumps(r), flush=True)
        write()
    if a.profile and deadline.expired():
        notes.append(f"{PROFILE_NOT_RUN} by command {n_cmd}: its --max-seconds {a.max_seconds:g} were spent (run "
                     f"again with --resume --profile)")
        print(f"{PROFILE_NOT_RUN}: --max-seconds spent", file=sys.stderr)
    elif a.profile:
        notes[:] = [n for n in notes if not n.startswith(PROFILE_NOT_RUN)]  # this command writes it
        T, B = a.profile_length or lengths[0]
        # the eager steps (a @graph model runs the same kernels as its eager form)
        prof = {m: profile_one(m, preset, T, B, device, a.profile_top) for m in models if not m.endswith(GRAPH)}
        res["profile"] = {"T": T, "B": B, "kernels": prof}
        lines = [f"# Top-{a.profile_top} kernels of one training step, {meta['preset']}, T = {T}, B = {B}", "",
                 "    " + commands(meta["command"])[-1], "", f"{meta['device']}; torch {meta['torch']}, triton "
                 f"{meta['triton']}", ""]
        for m, ks in prof.items():
            lines += [f"## {m}", "", "| kernel | calls | ms | share |", "|---|---|---|---|"]
            lines += [f"| `{k['kernel'][:90]}` | {k['calls']} | {k['ms']:.2f} | {100 * k['share']:.1f}% |" for k in ks]
            if device == "cuda":  # on the CPU the rows are ops' self times, not a device's busy time
                cell = _get(table_rows.list(), m, T, B)
                lines += ["", busy_line(ks[-1]["ms"], ks[-1]["calls"], cell["ms"] if cell else None)]
            lines.append("")
        (out / "bench_model_profile.md").write_text("\n".join(lines))
    write()
    print((out / "bench_model.md").read_text())
    return res


if __name__ == "__main__":
    main()
