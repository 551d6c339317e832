"""Preparation throughput: does tokenization scale over a host's cores, and how long would SlimPajama take?

Question: with P processes (default 1, 4, 8, 16), how many tokens/s does ``prepare_corpus`` reach (zstd read, UTF-8 and
JSON verification, tokenization, uint16 write), how close is it to linear scaling (goal >= 0.8), does it reach
8M tokens/s on 16 cores, how do the sentencepiece and HF ``tokenizers`` backends compare (same ids), and what wall time
do the figures project for 15B and 627B tokens? Also: peak memory of a capped preparation on a corpus 100x its cap.

    python benchmarks/bench_prepare.py --out benchmarks/results            # 16-core host, about 2-3 minutes
    python benchmarks/bench_prepare.py --tiny --out /tmp/bench_prepare     # a smoke run on any machine

No network: the script writes a synthetic SlimPajama-layout corpus first (``train/chunk1/*.jsonl.zst``, equal-size
files of about ``--file-tokens`` Mistral tokens each, documents drawn from the Python documentation topics and the
standard library's sources, labelled RedPajamaBook / RedPajamaGithub), then runs each (backend, P) in a fresh process
on ``P * --files-per-proc`` files (weak scaling: the same work per process), so that every figure is a whole
preparation from raw files to a complete manifest, and peak RSS is that run's own.

Writes ``<out>/bench_prepare.json`` and ``<out>/bench_prepare.md``; prints the table last.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ("RedPajamaBook", "RedPajamaGithub")


def _documents() -> list[tuple[str, str]]:
    import glob

    from pydoc_data.topics import topics

    docs = [(SETS[0], t) for _, t in sorted(topics.items()) if t]
    for f in sorted(glob.glob(os.path.dirname(os.__file__) + "/*.py")):
        with open(f, encoding="utf-8", errors="replace") as fh:
            docs.append((SETS[1], fh.read()))
    return docs


def write_corpus(root: Path, n_files: int, file_tokens: int, seed: int = 0) -> dict:
    """``n_files`` .jsonl.zst files of about ``file_tokens`` tokens (estimated at 3.6 characters a token)."""
    import zstandard

    docs = _documents()
    rng = random.Random(seed)
    chars_per_file = int(file_tokens * 3.6)
    out = root / "train" / "chunk1"
    out.mkdir(parents=True, exist_ok=True)
    total_bytes = 0
    for i in range(n_files):
        lines, chars = [], 0
        while chars < chars_per_file:
            name, text = rng.choice(docs)
            a = rng.randrange(len(text))  # a random slice: documents of varied length and content
            text = text[a:a + rng.randint(200, 20000)]
            lines.append(json.dumps({"text": text, "meta": {"redpajama_set_name": name}}) + "\n")
            chars += len(text)
        payload = zstandard.ZstdCompressor(level=3).compress("".join(lines).encode())
        (out / f"example_train_{i:04d}.jsonl.zst").write_bytes(payload)
        total_bytes += len(payload)
    return {"files": n_files, "compressed_bytes": total_bytes}


def run_one(args) -> dict:
    """One preparation in this process (called through a fresh subprocess by main)."""
    from datamodules.prepare import prepare_corpus
    from datamodules.sources import LocalFiles

    files = sorted(str(p) for p in Path(args.corpus, "train", "chunk1").glob("*.jsonl.zst"))[:args.n_files]
    caps = {"train": args.cap} if args.cap else None
    t0 = time.perf_counter()
    args.procs = int(args.procs)
    meta = prepare_corpus(LocalFiles(train=files), args.one, num_proc=args.procs, progress=False, max_tokens=caps,
                          tokenizer_backend=args.backend)
    wall = time.perf_counter() - t0
    info = meta["splits"]["train"]
    records = [json.loads(p.read_text()) for p in sorted(Path(args.one, "train").glob("*.json"))]
    return {"backend": args.backend, "procs": args.procs, "files": len(files), "cap": args.cap,
            "files_tokenized": len(records), "tokens": info["n_tokens"], "docs": info["n_docs"],
            "tokens_tokenized": sum(r["n_tokens"] for r in records), "seconds": round(wall, 3),
            "tokens_per_s": round(sum(r["n_tokens"] for r in records) / wall),
            "tokens_per_cpu_s": round(sum(r["n_tokens"] for r in records) / sum(r["cpu_seconds"] for r in records)),
            "peak_rss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def spawn(corpus: Path, out: Path, procs: int, n_files: int, backend: str, cap: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--one", str(out), "--corpus", str(corpus), "--procs", str(procs),
           "--n-files", str(n_files), "--backend", backend] + (["--cap", str(cap)] if cap else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hours(tokens: float, tps: float) -> str:
    h = tokens / tps / 3600
    return f"{h:.2f} h" if h < 48 else f"{h / 24:.1f} days"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the table and JSON")
    ap.add_argument("--procs", default="1,4,8,16", help="process counts, comma-separated")
    ap.add_argument("--backend", default="both", choices=("sentencepiece", "hf", "both"))
    ap.add_argument("--file-tokens", type=float, default=3e6, help="tokens per synthetic input file (about)")
    ap.add_argument("--files-per-proc", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="1 and 2 processes, small files: a smoke run")
    ap.add_argument("--no-cap-run", action="store_true", help="skip the peak-memory run of a capped preparation")
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--n-files", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    if args.tiny:
        args.procs, args.file_tokens, args.files_per_proc = "1,2", 1.5e5, 2
    procs = [int(p) for p in args.procs.split(",")]
    backends = ["sentencepiece", "hf"] if args.backend == "both" else [args.backend]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    import numpy
    import sentencepiece
    import tokenizers
    import zstandard

    env = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "numpy": numpy.__version__, "sentencepiece": sentencepiece.__version__,
           "tokenizers": tokenizers.__version__, "zstandard": zstandard.__version__,
           "loadavg_start": round(os.getloadavg()[0], 2)}
    n_files = max(procs) * args.files_per_proc
    rows, cap_row = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        corpus = write_corpus(tmp / "sp", n_files, int(args.file_tokens))
        env["corpus_write_seconds"] = round(time.perf_counter() - t0, 1)
        for backend in backends:
            for p in procs:
                r = spawn(tmp / "sp", tmp / "tok", p, p * args.files_per_proc, backend)
                rows.append(r)
                print(f"{backend:>13} P={p:<3} {r['tokens_tokenized']:>12,} tokens {r['seconds']:>8.2f} s "
                      f"{r['tokens_per_s']:>12,} tokens/s", file=sys.stderr)
        if not args.no_cap_run:  # a corpus 100x the cap, the most processes
            total = next(r["tokens"] for r in rows if r["procs"] == max(procs))
            cap_row = spawn(tmp / "sp", tmp / "tok", max(procs), n_files, backends[0], cap=max(1, total // 100))
            cap_row["corpus_tokens"] = total
    env["loadavg_end"] = round(os.getloadavg()[0], 2)
    for r in rows:
        base = next(b for b in rows if b["backend"] == r["backend"] and b["procs"] == min(procs))
        r["scaling_efficiency"] = round(r["tokens_per_s"] / (base["tokens_per_s"] * r["procs"] / base["procs"]), 3)
    best = max((r for r in rows if r["procs"] == max(procs)), key=lambda r: r["tokens_per_s"])
    projection = {"procs": best["procs"], "backend": best["backend"], "tokens_per_s": best["tokens_per_s"],
                  "15B_hours": round(15e9 / best["tokens_per_s"] / 3600, 3),
                  "627B_hours": round(627e9 / best["tokens_per_s"] / 3600, 2)}
    result = {"env": env, "corpus": corpus, "file_tokens": args.file_tokens, "files_per_proc": args.files_per_proc,
              "runs": rows, "capped_run": cap_row, "projection": projection,
              "goals": {"scaling_efficiency_at_max_procs": 0.8, "tokens_per_s_at_16": 8e6}}
    (out_dir / "bench_prepare.json").write_text(json.dumps(result, indent=1) + "\n")

    lines = [f"# Preparation throughput ({env['cpu_count']} CPU cores: {env['cpu']})", "",
             f"Command: `{env['command']}`  ",
             f"Python {env['python']}, sentencepiece {env['sentencepiece']}, tokenizers {env['tokenizers']}, zstandard "
             f"{env['zstandard']}. 1-min load average {env['loadavg_start']} at start, {env['loadavg_end']} at end.", "",
             f"Synthetic SlimPajama-layout corpus: {corpus['files']} `.jsonl.zst` files of ~{args.file_tokens:,.0f} "
             f"Mistral tokens ({corpus['compressed_bytes'] / 2**20:,.0f} MiB compressed); each run prepares "
             f"{args.files_per_proc} files per process from raw files to a complete manifest in a fresh process. "
             "tokens/s = tokens tokenized / wall seconds of the whole preparation; efficiency = tokens/s / (P x the "
             f"{min(procs)}-process tokens/s).", "",
             "| backend | processes | files | tokens | seconds | tokens/s | tokens/CPU-s per process | efficiency | "
             "peak RSS main / worker (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['procs']} | {r['files']} | {r['tokens_tokenized']:,} | {r['seconds']} | "
              f"{r['tokens_per_s']:,} | {r['tokens_per_cpu_s']:,} | {r['scaling_efficiency']:.2f} | "
              f"{r['peak_rss_main_mib']} / {r['peak_rss_worker_mib']} |" for r in rows]
    if cap_row:
        lines += ["", f"Capped run ({cap_row['procs']} processes, {cap_row['backend']}): cap {cap_row['cap']:,} tokens "
                      f"on a {cap_row['corpus_tokens']:,}-token corpus of {cap_row['files']} files: "
                      f"{cap_row['tokens']:,} tokens kept, {cap_row['files_tokenized']} file(s) tokenized "
                      f"({cap_row['tokens_tokenized']:,} tokens), {cap_row['seconds']} s, peak RSS main "
                      f"{cap_row['peak_rss_main_mib']} MiB, largest worker {cap_row['peak_rss_worker_mib']} MiB."]
    lines += ["", f"Projection at {projection['tokens_per_s']:,} tokens/s ({projection['backend']}, "
                  f"{projection['procs']} processes, one host): 15B tokens in {_hours(15e9, best['tokens_per_s'])}, "
                  f"627B tokens in {_hours(627e9, best['tokens_per_s'])}; N hosts preparing shares "
                  "(`task=prepare +shard_index=i +shard_count=N`) divide these by N.",
              f"Goals: efficiency >= 0.8 at {max(procs)} processes (measured {best['scaling_efficiency']:.2f}), "
              f">= 8,000,000 tokens/s on 16 cores (measured {best['tokens_per_s']:,} with {best['procs']})."]
    (out_dir / "bench_prepare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
