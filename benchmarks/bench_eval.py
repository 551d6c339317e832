"""Question: how long does the paper's evaluation (the default task list of `task=eval`) take for a 340M model?

    python benchmarks/bench_eval.py --out DIR [--limit 64] [--preset 340M] [--family deltanet] [--ckpt PATH]
    python benchmarks/bench_eval.py --out DIR --tiny     # a 2-layer model, limit 4: checks the script on a CPU

The task data is not on the benchmark machine, so the script writes local stand-in tasks: for each task of
evaluation.report.DEFAULT_TASKS, a jsonl file and an lm-eval YAML with the same request type, number of choices,
approximate text lengths (in words) and full example count as the real task (the sizes below, from the datasets'
evaluated splits).  Each stand-in runs through lm-eval and evaluation.lm_eval_adapter.DeltaNetLM exactly as
`python run.py task=eval` runs the real one (bf16 autocast and the Triton chunk kernel on CUDA), with `--limit`
examples and again with 2: the difference gives the seconds per example (the rest is lm-eval's fixed cost per task),
and fixed + per-example x full count the expected full-run time of each task.
The words are random, so the scores mean nothing; only the timings are the result.  Kernel compilation is paid in a
warm-up pass first and reported apart.  Writes bench_eval.json and bench_eval.md into --out (the stand-in tasks go
to a temporary directory, or --task-dir).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# task -> (request type, full example count, choices, context words, choice / target words)
#   multiple_choice: one loglikelihood request per choice; loglikelihood: one; rolling: one document of `context`
#   words; generate_until: a prompt of `context` words and up to 48 generated tokens (the recall tasks' setting).
STAND_INS: dict[str, tuple[str, int, int, int, int]] = {
    "wikitext": ("loglikelihood_rolling", 62, 1, 3900, 0),       # wikitext-2 test: 62 articles, ~245K words
    "lambada_openai": ("loglikelihood", 5153, 1, 75, 1),
    "piqa": ("multiple_choice", 1838, 2, 8, 20),
    "hellaswag": ("multiple_choice", 10042, 4, 40, 20),
    "winogrande": ("multiple_choice", 1267, 2, 18, 6),
    "arc_easy": ("multiple_choice", 2376, 4, 22, 4),
    "arc_challenge": ("multiple_choice", 1172, 4, 26, 5),
    "social_iqa": ("multiple_choice", 1954, 3, 25, 4),
    "boolq": ("multiple_choice", 3270, 2, 110, 1),
    "swde": ("generate_until", 1111, 1, 1000, 0),               # HTML-derived pages, long prompts
    "squad_completion": ("generate_until", 2984, 1, 150, 0),
    "fda": ("generate_until", 1102, 1, 1400, 0),
}
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there one all we their been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "our over man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people state memory rule delta linear attention model chunk "
         "kernel state update error value key query token sequence length layer").split()


def write_stand_ins(root: Path, tasks: list[str] | None = None, seed: int = 0) -> list[str]:
    """One jsonl + YAML per stand-in task (``tasks``, default all) under ``root``; returns their names
    (``standin_<task>``)."""
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for task, (kind, count, choices, ctx, tgt) in STAND_INS.items():
        if tasks and task not in tasks:
            continue
        name = f"standin_{task}"
        rows = []
        for _ in range(count):
            if kind == "multiple_choice":
                rows.append({"ctx": text(ctx), "choices": [text(tgt) for _ in range(choices)],
                             "label": rng.randrange(choices)})
            elif kind == "loglikelihood":
                rows.append({"ctx": text(ctx), "target": " " + text(tgt)})
            elif kind == "loglikelihood_rolling":
                rows.append({"text": text(ctx)})
            else:
                rows.append({"ctx": text(ctx) + "\nanswer:", "target": " " + text(2)})
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        head = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / (name + '.jsonl')}\n"
                f"test_split: test\noutput_type: {'loglikelihood' if kind == 'loglikelihood' else kind}\n")
        body = {
            "multiple_choice": 'doc_to_text: "{{ctx}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
                               "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
            "loglikelihood": 'doc_to_text: "{{ctx}}"\ndoc_to_target: "{{target}}"\n'
                             "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n"
                             "    higher_is_better: false\n  - metric: acc\n",
            "loglikelihood_rolling": 'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                                     "metric_list:\n  - metric: word_perplexity\n",
            "generate_until": 'doc_to_text: "{{ctx}}"\ndoc_to_target: "{{target}}"\n'
                              'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 48\n  do_sample: false\n'
                              "metric_list:\n  - metric: exact_match\n",
        }[kind]
        (root / f"{name}.yaml").write_text(head + body)
        names.append(name)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (bench_eval.json, bench_eval.md)")
    p.add_argument("--limit", type=int, default=64, help="examples per task that are timed")
    p.add_argument("--preset", default="340M")
    p.add_argument("--family", default="deltanet")
    p.add_argument("--ckpt", default=None, help="a checkpoint instead of a randomly initialised preset model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=65536)
    p.add_argument("--context-length", type=int, default=2048)
    p.add_argument("--tasks", nargs="+", default=None, choices=sorted(STAND_INS), help="a subset (default: all)")
    p.add_argument("--task-dir", default=None, help="where the stand-in tasks are written (default: a temp dir)")
    p.add_argument("--tiny", action="store_true", help="2-layer width-64 model, limit 4 (a CPU check of the script)")
    a = p.parse_args()

    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from deltanet import DeltaNetConfig, DeltaNetForCausalLM
    from evaluation.lm_eval_adapter import DeltaNetLM

    out = Path(a.out)
    task_dir = Path(a.task_dir) if a.task_dir else Path(tempfile.mkdtemp(prefix="bench_eval_tasks_"))
    names = write_stand_ins(task_dir, a.tasks)
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    torch.manual_seed(0)
    if a.ckpt:
        from lit_modules.checkpoint import load_model
        model = load_model(a.ckpt)
    elif a.tiny:
        model = DeltaNetForCausalLM(DeltaNetConfig(hidden_size=64, num_layers=2, num_heads=2, family=a.family))
    else:
        model = DeltaNetForCausalLM(DeltaNetConfig.from_preset(a.preset, family=a.family))
    limit = 4 if a.tiny else a.limit
    lm = DeltaNetLM(model=model, batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens,
                    max_length=a.context_length, progress=False)
    cuda = lm.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run(task: str, n: int) -> float:
        sync()
        t0 = time.perf_counter()
        simple_evaluate(model=lm, tasks=[task], limit=n, task_manager=tm, log_samples=False, bootstrap_iters=0)
        sync()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    for task in [f"standin_{t}" for t in (a.tasks or STAND_INS)]:  # warm-up: kernel compilation for every request type and length range
        run(task, min(2, limit))
    warmup_s = time.perf_counter() - t0
    rows = []
    for name in names:
        task = name[len("standin_"):]
        kind, count, *_ = STAND_INS[task]
        n = min(limit, count)
        small = min(2, n - 1) if n > 1 else 0
        s = run(name, n)
        s_small = run(name, small) if small else 0.0
        # lm-eval's fixed cost per task (dataset load, request building) apart from the per-example cost
        per = max((s - s_small) / (n - small), 0.0) if small else s / n  # timing noise can make the difference < 0
        fixed = max(s - per * n, 0.0)
        full = fixed + per * count
        rows.append({"task": task, "type": kind, "examples_timed": n, "seconds": s, "fixed_s": fixed,
                     "s_per_example": per, "full_examples": count, "expected_full_s": full,
                     "upper_bound_full_s": s / n * count})  # as if the fixed cost grew with the examples
        print(f"{task:18s} {kind:22s} {n:4d} examples {s:7.2f} s (fixed {fixed:.2f} s) -> full {count:6d}: "
              f"{full:8.1f} s", flush=True)
    total = sum(r["expected_full_s"] for r in rows)
    upper = sum(r["upper_bound_full_s"] for r in rows)
    info = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "lm_eval": lm_eval.__version__,
            "triton": __import__("triton").__version__, "model": {"preset": "tiny" if a.tiny else a.preset,
                                                                  "family": model.config.family,
                                                                  "parameters": model.num_parameters()},
            "dtype": str(lm.dtype), "batch_size": a.batch_size, "max_batch_tokens": a.max_batch_tokens,
            "context_length": a.context_length, "limit": limit, "warmup_s": warmup_s}
    result = {**info, "tasks": rows, "expected_full_run_s": total, "upper_bound_full_run_s": upper}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_eval.json").write_text(json.dumps(result, indent=2))
    md = [f"# bench_eval: {info['model']['parameters'] / 1e6:.0f}M {info['model']['family']} on {info['device']}", "",
          f"`{info['command']}`; torch {info['torch']}, triton {info['triton']}, lm-eval {info['lm_eval']}, "
          f"{info['dtype']}, context {a.context_length}, batch {a.batch_size} / {a.max_batch_tokens} tokens; "
          f"warm-up (compilation) {warmup_s:.1f} s", "",
          "| task | type | timed | s | fixed s | s / example | full examples | expected full s |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['task']} | {r['type']} | {r['examples_timed']} | {r['seconds']:.2f} | {r['fixed_s']:.2f} | "
           f"{r['s_per_example']:.4f} | {r['full_examples']} | {r['expected_full_s']:.0f} |" for r in rows]
    md += ["", f"Expected full run of the default task list: {total:.0f} s ({total / 60:.1f} min), "
               f"plus the warm-up (at most {upper:.0f} s if lm-eval's fixed cost per task grew with the examples)."]
    (out / "bench_eval.md").write_text("\n".join(md) + "\n")
    print(f"expected full run: {total:.0f} s ({total / 60:.1f} min); written to {out}")


if __name__ == "__main__":
    main()
