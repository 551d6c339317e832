"""Question: how fast does a training step (forward + backward) of DeltaNet run against Transformer++ at equal size?

    python benchmarks/bench_model.py --preset 340M --batch 8 --seq-len 2048 [--families deltanet transformer] [--out f.json]

bf16 autocast over float32 weights (as in training), Triton delta-rule kernels, SDPA (flash) attention; median step time
by triton.testing.do_bench.  MFU counts 6 * params * tokens (attention-score FLOPs left out) against the bf16 dense
peak given by --peak-tflops (H100/H200 datasheet: 989).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deltanet import FAMILIES, PRESETS, DeltaNetConfig, DeltaNetForCausalLM  # noqa: E402


def bench(family: str, preset: str, batch: int, seq_len: int, warmup_ms: int, rep_ms: int) -> dict:
    import triton

    torch.manual_seed(0)
    model = DeltaNetForCausalLM(DeltaNetConfig.from_preset(preset, family=family)).cuda()
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # compile kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = triton.testing.do_bench(step, warmup=warmup_ms, rep=rep_ms)
    n = model.num_parameters()
    tokens = batch * seq_len
    res = {"family": family, "preset": preset, "params": n, "batch": batch, "seq_len": seq_len, "ms": ms,
           "tokens_per_s": tokens / (ms / 1e3), "model_tflops": 6 * n * tokens / (ms / 1e3) / 1e12,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    del model
    torch.cuda.empty_cache()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="340M", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--families", nargs="+", default=["deltanet", "transformer"], choices=FAMILIES)
    p.add_argument("--warmup-ms", type=int, default=200)
    p.add_argument("--rep-ms", type=int, default=1000)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    import triton
    meta = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__}
    rows = []
    for fam in a.families:
        r = bench(fam, a.preset, a.batch, a.seq_len, a.warmup_ms, a.rep_ms)
        r["mfu"] = r["model_tflops"] / a.peak_tflops
        rows.append(r)
        print(json.dumps(r), flush=True)
        if a.out:  # after every family, so a run cut short by a time limit keeps what it measured
            Path(a.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"\n{meta}\n| family | params | ms/step | tokens/s | MFU | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['params'] / 1e6:.0f}M | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.1f} |")
    if len(rows) > 1:
        base = rows[-1]
        for r in rows[:-1]:
            print(f"{r['family']} / {base['family']} tokens/s ratio: {r['tokens_per_s'] / base['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
