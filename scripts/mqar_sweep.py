"""MQAR sweep on one GPU: model family x width x learning rate, test accuracy on the query positions.

Three sub-commands:

    # run jobs (family/width/lr/recipe/seconds), several processes sharing the GPU, all within --budget seconds
    python scripts/mqar_sweep.py sweep --out OUT --budget 300 --workers 4 \
        --job deltanet/64/1e-3/mix/150 --job deltanet/64/3e-3/pure/150 ...
    # one job (what `sweep` launches; resumable from its checkpoint with --resume)
    python scripts/mqar_sweep.py job --spec deltanet/64/1e-3/mix/150 --out OUT
    # tables (markdown + JSON) and PNG from the jobs' results, best run per (family, width)
    python scripts/mqar_sweep.py report --results OUT/runs --out benchmarks/results

Each job composes the same Hydra config as ``python run.py experiment=mqar model=<family>`` (plus overrides), builds
the same objects (``MQARDataModule``, ``MQARModule`` -> ``DeltaNetForCausalLM``, its AdamW parameter groups and
cosine schedule) and trains them in a lean loop rather than in Lightning: a 2-layer width-64 model is launch-bound,
so the loop keeps all data on the GPU (the 100K training sequences are generated there, batches are index
gathers), has no host synchronisation per step (the loss gathers the query positions with fixed shapes instead of
a boolean mask), and evaluates on the test set every ``--eval-every`` steps, stopping once test accuracy reaches
``--target`` (0.99).  Several job processes share the GPU so that one's kernels run while another launches.

Recipes: ``pure`` trains on 512-token sequences with 64 pairs (the test task); ``mix`` trains on an equal mixture of
4, 8, 16, 32 and 64 pairs at the same length (Zoology's later configs also train on mixtures of easier settings);
the test set is always ``data.num_kv_pairs`` pairs.  ``--fresh-data`` draws a new training set every epoch instead of
Zoology's fixed 100K (on the GPU it costs milliseconds): the recorded width-64 runs memorised the fixed set.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DELTANET_ROOT", str(ROOT))

RECIPES = {"pure": None, "mix": [4, 8, 16, 32, 64]}


def parse_spec(spec: str) -> dict:
    """'family/width/lr/recipe/seconds' -> dict."""
    family, width, lr, recipe, seconds = spec.split("/")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    return {"family": family, "width": int(width), "lr": float(lr), "recipe": recipe, "seconds": float(seconds)}


def job_name(j: dict) -> str:
    return f"{j['family']}_w{j['width']}_lr{j['lr']:.0e}_{j['recipe']}"


# ----------------------------------------------------------------------------------------------- one job
def compose(j: dict, args) -> "DictConfig":  # noqa: F821
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    heads = max(1, j["width"] // args.head_dim)
    overrides = [
        "experiment=mqar", f"model={j['family']}", f"model.hidden_size={j['width']}", f"model.num_heads={heads}",
        f"optim.optimizer.lr={j['lr']}", f"optim.scheduler.min_lr={min(args.min_lr, j['lr'])}",
        f"optim.scheduler.warmup_steps={args.warmup}", f"data.batch_size={args.batch_size}",
        f"data.seq_len={args.seq_len}", f"data.num_kv_pairs={args.kv_pairs}", f"seed={args.seed}",
        f"data.num_train_examples={args.num_train}", f"data.num_test_examples={args.num_test}",
        "data.train_kv_pairs=" + ("null" if RECIPES[j["recipe"]] is None
                                  else "[" + ",".join(str(p) for p in RECIPES[j["recipe"]] if 4 * p <= args.seq_len) + "]"),
    ] + list(args.override or [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def fixed_query_index(labels, ignore_index: int = -100):
    """(N, T) labels -> (pos (N, Pmax) positions t whose logits predict labels[t + 1], target (N, Pmax), -100 pads).

    Fixed shapes, so the training step needs no boolean indexing (no host sync)."""
    import torch

    tgt = labels[:, 1:]  # (N, T-1)
    mask = tgt != ignore_index
    pmax = int(mask.sum(1).max())
    order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :pmax]  # labelled first
    target = tgt.gather(1, order)  # -100 where a row has fewer than pmax labels
    return order, target


def run_job(j: dict, args) -> dict:
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    cfg = compose(j, args)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = instantiate(cfg.data, device=str(device))
    dm.setup()
    train_pos, train_tgt = fixed_query_index(dm.train_set["labels"])
    test_ids, test_labels = dm.test_set["input_ids"], dm.test_set["labels"]
    train_ids = dm.train_set["input_ids"]
    n_train = train_ids.shape[0]
    module = instantiate(cfg.lit_module, model_config=instantiate(cfg.model))
    model = module.model.to(device)
    if device.type == "cuda" and j["family"] != "transformer":  # check the Triton path once; fall back loudly
        try:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                model(train_ids[:2], labels=dm.train_set["labels"][:2]).loss.backward()
            model.zero_grad(set_to_none=True)
        except Exception as e:  # noqa: BLE001
            print(f"[{job_name(j)}] Triton backend failed ({type(e).__name__}: {e}); using backend=torch", flush=True)
            args.override = list(args.override or []) + ["model.backend=torch"]
            cfg = compose(j, args)
            torch.manual_seed(cfg.seed)
            module = instantiate(cfg.lit_module, model_config=instantiate(cfg.model))
            model = module.model.to(device)
    n_params = model.num_parameters()
    B = int(cfg.data.batch_size)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_fn(ids, pos, tgt):  # mean CE over the query answers: the model's loss, on fixed-shape gathers
        h, _ = model.model(ids)  # (B, T, C)
        hq = h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, P, C)
        logits = model.lm_head(hq).float()  # (B, P, V)
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        from lit_modules.mqar import query_predictions

        model.eval()
        correct = total = 0
        loss_sum = 0.0
        for s in range(0, test_ids.shape[0], args.eval_batch):
            with torch.autocast(**amp):
                logits, target = query_predictions(model, test_ids[s:s + args.eval_batch],
                                                   test_labels[s:s + args.eval_batch])
            correct += int((logits.argmax(-1) == target).sum())
            total += target.numel()
            loss_sum += float(F.cross_entropy(logits.float(), target, reduction="sum"))
        model.train()
        return correct / total, loss_sum / total

    # Optimiser and schedule exactly as the LightningModule configures them; total steps fixed after a timing probe.
    opt_cfg = module.configure_optimizers()
    optimizer = opt_cfg["optimizer"] if isinstance(opt_cfg, dict) else opt_cfg
    peaks = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]  # configure_optimizers' schedule moved lr
    step, seqs, train_seconds = 0, 0, 0.0
    call = 0  # how many earlier commands trained this run (resumed from its checkpoint)
    curve: list[dict] = []
    ckpt_path = Path(args.out) / "ckpt" / f"{job_name(j)}.pt"
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seqs, train_seconds, curve = state["step"], state["seqs"], state["train_seconds"], state["curve"]
        for c in curve:
            c.setdefault("call", 0)
        call = 1 + max(c["call"] for c in curve)
        print(f"[{job_name(j)}] resumed at step {step} ({seqs} sequences)", flush=True)
    resumed_at = step

    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1000 + step)
    perm = torch.randperm(n_train, generator=gen, device=device)
    cursor = 0

    per_epoch = B * (n_train // B)  # sequences per epoch (the last partial batch is dropped)
    if args.fresh_data and resumed_at:
        cursor = n_train  # resumed: start on a new set, not on the first epoch's again

    def next_batch():
        nonlocal perm, cursor, train_ids, train_pos, train_tgt
        if cursor + B > n_train:
            perm, cursor = torch.randperm(n_train, generator=gen, device=device), 0
            if args.fresh_data:  # a new training set every epoch, seeded by the epoch, generated on the device
                dm.train_seed, dm.train_set = int(cfg.data.train_seed) + 1000 * (seqs // per_epoch), None
                dm.setup()
                train_ids = dm.train_set["input_ids"]
                train_pos, train_tgt = fixed_query_index(dm.train_set["labels"])
        idx = perm[cursor:cursor + B]
        cursor += B
        return train_ids[idx], train_pos[idx], train_tgt[idx]

    def train_step(lr_factor_fn) -> torch.Tensor:
        for g, peak, f in zip(optimizer.param_groups, peaks, lr_factor_fn):
            g["lr"] = peak * f(step)
        ids, pos, tgt = next_batch()
        with torch.autocast(**amp):
            loss = loss_fn(ids, pos, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.trainer.gradient_clip_val or 1e9))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def schedule(total: int) -> list:
        """The config's schedule for `total` steps, as one lr factor function per group (we set lr ourselves)."""
        for g, peak in zip(optimizer.param_groups, peaks):  # the factory reads each group's peak from g["lr"]
            g["lr"] = peak
        return instantiate(cfg.optim.scheduler, total_steps=total)(optimizer).lr_lambdas

    if resumed_at:  # time the first steps at the lr the previous run ended with
        lambdas = [lambda s, f=g["lr"] / peak: f for g, peak in zip(optimizer.param_groups, peaks)]
    else:  # warm-up steps: their lr does not depend on the total
        lambdas = schedule(max(10**9, args.warmup + 1))
    setup_seconds = time.perf_counter() - t_start
    budget = j["seconds"]
    print(f"[{job_name(j)}] {n_params / 1e6:.2f}M params, setup {setup_seconds:.1f}s, budget {budget:.0f}s", flush=True)

    # timing probe: the first steps are warm-up steps, whose lr does not depend on the total
    probe_steps = args.probe_steps
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for i in range(probe_steps):
        if i == 3:  # Triton compilation and autotuning happen in the first steps
            sync()
            t_probe = time.perf_counter()
        last_loss = train_step(lambdas)
        step += 1
        seqs += B
    sync()
    now = time.perf_counter()
    steps_per_s = (probe_steps - 3) / max(now - t_probe, 1e-9)
    train_seconds += now - t0
    remaining = max(0.0, budget - (now - t_start))
    total_steps = step + max(1, int(remaining * steps_per_s * args.step_fill))
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    lambdas = schedule(max(total_steps, args.warmup + 1))
    print(f"[{job_name(j)}] {steps_per_s:.1f} steps/s ({steps_per_s * B:.0f} seq/s) -> {total_steps} steps", flush=True)

    deadline = t_start + budget
    reached = False
    result_path = Path(args.out) / "runs" / f"{job_name(j)}.json"

    def make_result() -> dict:
        return {**j, "name": job_name(j), "params": n_params, "batch_size": B, "steps": step, "sequences": seqs,
                "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
                "setup_seconds": round(setup_seconds, 1), "steps_per_s_probe": round(steps_per_s, 1),
                "planned_steps": total_steps, "final_acc": curve[-1]["acc"],
                "best_acc": max(c["acc"] for c in curve), "reached_target": reached, "target": args.target,
                "resumed_at": resumed_at, "curve": curve, "seq_len": args.seq_len, "kv_pairs": args.kv_pairs,
                "num_heads": int(cfg.model.num_heads), "recipe_kv_pairs": RECIPES[j["recipe"]],
                "fresh_data": bool(args.fresh_data), "num_train": n_train,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}

    def write_result(r: dict) -> None:  # after every evaluation, so a run cut short still leaves its curve
        result_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(r, indent=1))
        tmp.replace(result_path)
    acc, test_loss = evaluate()
    curve.append({"step": step, "seqs": seqs, "seconds": round(train_seconds, 2), "acc": acc, "loss": test_loss,
                  "call": call})
    t_seg = time.perf_counter()
    while step < total_steps:
        last_loss = train_step(lambdas)
        step += 1
        seqs += B
        if step % args.eval_every == 0 or step == total_steps or time.perf_counter() > deadline:
            sync()
            train_seconds += time.perf_counter() - t_seg
            acc, test_loss = evaluate()
            curve.append({"step": step, "seqs": seqs, "seconds": round(train_seconds, 2), "acc": acc,
                          "loss": test_loss, "train_loss": float(last_loss), "call": call})
            print(f"[{job_name(j)}] step {step} seqs {seqs} {train_seconds:.0f}s test acc {acc:.4f} "
                  f"loss {test_loss:.3f} train loss {float(last_loss):.3f}", flush=True)
            write_result(make_result())
            t_seg = time.perf_counter()
            if acc >= args.target:
                reached = True
                break
            if time.perf_counter() > deadline:
                break
    result = make_result()
    write_result(result)
    if j["width"] <= args.ckpt_max_width:  # small enough to carry to the next call and resume
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "seqs": seqs,
                    "train_seconds": train_seconds, "curve": curve, "planned_steps": total_steps}, ckpt_path)
    return result


# ----------------------------------------------------------------------------------------------- sweep
def sweep(args) -> None:
    """Launch the jobs in the given order, at most --workers at a time, all ending by the global budget."""
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pending = [parse_spec(s) for s in args.job]
    running: list[tuple[dict, subprocess.Popen]] = []
    skipped = []
    passthrough = []
    for k in ("batch_size", "seq_len", "kv_pairs", "num_train", "num_test", "eval_every", "warmup", "target",
              "head_dim", "min_lr", "seed"):
        passthrough += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.resume:
        passthrough.append("--resume")
    if args.fresh_data:
        passthrough.append("--fresh-data")
    for o in args.override or []:
        passthrough += ["--override", o]
    while pending or running:
        running = [(j, p) for j, p in running if p.poll() is None]
        left = args.budget - (time.time() - t0)
        if left < -args.grace:  # a job past its own deadline (e.g. stuck compiling): stop it, keep its partial curve
            for j, proc in running:
                print(f"[sweep] terminating {job_name(j)} (pid {proc.pid}), over budget", flush=True)
                proc.terminate()
            for _, proc in running:
                proc.wait(timeout=30)
            running = []
        while pending and len(running) < args.workers:
            j = pending.pop(0)
            seconds = min(j["seconds"], left - 5)
            if seconds < args.min_job_seconds:
                skipped.append({**j, "reason": f"{left:.0f}s of budget left"})
                continue
            spec = f"{j['family']}/{j['width']}/{j['lr']}/{j['recipe']}/{seconds:.0f}"
            log = open(out / "runs" / f"{job_name(j)}.log", "a")
            cmd = [sys.executable, __file__, "job", "--spec", spec, "--out", str(out), *passthrough]
            running.append((j, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)))
            print(f"[sweep {time.time() - t0:5.0f}s] started {job_name(j)} ({seconds:.0f}s)", flush=True)
        time.sleep(1.0)
    (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    print(f"[sweep] done in {time.time() - t0:.0f}s; skipped {len(skipped)}: {[job_name(s) for s in skipped]}")
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    print(f"{'run':40s} {'acc':>7s} {'steps':>6s} {'seqs':>8s} {'sec':>6s} {'steps/s':>7s}")
    for r in rows:
        print(f"{r['name']:40s} {r['final_acc']:7.4f} {r['steps']:6d} {r['sequences']:8d} {r['train_seconds']:6.0f} "
              f"{r['steps_per_s_probe']:7.1f}")


# ----------------------------------------------------------------------------------------------- report
def data_label(r: dict) -> str:
    return "fresh" if r.get("fresh_data") else f"fixed {r.get('num_train', 100_000) // 1000}K"


def variant(r: dict) -> str:
    """What else distinguishes a run besides family/width/lr: recipe, batch size, fresh or fixed training data."""
    return f"{r['recipe']}, batch {r['batch_size']}, {data_label(r)}"


def report(args) -> None:
    """Best run per (family, width) over lrs and variants: markdown tables, JSON, PNG (accuracy vs width; vs sequences)."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*.json"))]
    if not runs:
        raise SystemExit(f"no results under {args.results}")
    best: dict[tuple, dict] = {}
    for r in runs:
        key = (r["family"], r["width"])
        # Zoology's rule, best lr per point; ties (both reach the target) go to fewer training sequences
        score = (r["final_acc"] >= r["target"], r["final_acc"] if r["final_acc"] < r["target"] else -r["sequences"])
        if key not in best or score > best[key][0]:
            best[key] = (score, r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# MQAR (Zoology): sequence {runs[0]['seq_len']}, {runs[0]['kv_pairs']} key-value pairs, "
             f"vocabulary 8192, 2 layers; test accuracy on 3,000 held-out sequences", "",
             "![MQAR accuracy vs width and vs training sequences](mqar.png)", "",
             f"Device: {runs[0]['device']}, torch {runs[0]['torch']}. Tables and plot: `python scripts/mqar_sweep.py "
             f"report --results {args.results} --out {args.out}` (with the --summary/--note/--command text of this "
             "page); the commands that made the runs are listed at the end.", ""]
    lines += [f"- {n}" for n in (args.summary or [])]
    lines += ["", "Best run per family x width (over the lrs and variants tried; test accuracy at the end of the run):", "",
              "| family | width | test acc | lr | batch | data | recipe | sequences | train s | lrs tried |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    table = []
    for key in sorted(best):
        r = best[key][1]
        tried = sorted({x["lr"] for x in runs if (x["family"], x["width"]) == key})
        lines.append(f"| {r['family']} | {r['width']} | {100 * r['final_acc']:.2f}% | {r['lr']:.0e} | {r['batch_size']} | "
                     f"{data_label(r)} | {r['recipe']} | {r['sequences']:,} | {r['train_seconds']:.0f} | "
                     f"{', '.join(f'{x:.0e}' for x in tried)} |")
        table.append({k: v for k, v in r.items() if k != "curve"})
    lines += ["", "All runs (runs stop at the target accuracy, 99%, or at their time budget; fixed = Zoology's fixed "
              "100K training set, fresh = a new 100K set every epoch):", "",
              "| run | family | width | lr | variant | test acc | best acc | steps | sequences | train s | steps/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["family"], r["width"], r["name"])):
        lines.append(f"| {r['name']} | {r['family']} | {r['width']} | {r['lr']:.0e} | {variant(r)} | "
                     f"{100 * r['final_acc']:.2f}% | {100 * r['best_acc']:.2f}% | {r['steps']} | {r['sequences']:,} | "
                     f"{r['train_seconds']:.0f} | {r['steps_per_s_probe']:.0f} |")
    lines += [""] + [f"- {n}" for n in (args.note or [])]
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in (args.command or ["python scripts/mqar_sweep.py sweep ..."])]
    (out / "mqar.md").write_text("\n".join(lines) + "\n")
    (out / "mqar.json").write_text(json.dumps({"best": table, "runs": runs}, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    for fi, fam in enumerate(sorted({k[0] for k in best})):
        pts = sorted((k[1], best[k][1]) for k in best if k[0] == fam)
        learned = [(w, r) for w, r in pts if r["best_acc"] >= 0.01]  # runs still at chance: hollow, not joined
        line, = a1.plot([w for w, _ in learned], [100 * r["final_acc"] for _, r in learned], "o-", label=fam)
        chance = [(w, r) for w, r in pts if r["best_acc"] < 0.01]
        a1.plot([w for w, _ in chance], [100 * r["final_acc"] for _, r in chance], "o", mfc="none",
                color=line.get_color())
        for w, r in pts:  # the training length differs between points: say it on the plot
            a1.annotate(f"{r['sequences'] / 1e6:.2f}M seq" + ("" if r["best_acc"] >= 0.01 else "\nat chance"),
                        (w, 100 * r["final_acc"]), textcoords="offset points", xytext=(4, -10 - 9 * fi), fontsize=7)
    a1.set_xscale("log", base=2)
    a1.margins(x=0.2)  # room for the annotations
    a1.set_xlabel("model width")
    a1.set_ylabel("test accuracy (%)")
    a1.set_title("MQAR, best run per point (hollow: never left chance)")
    a1.set_ylim(-8, 102)
    a1.legend(fontsize=8)
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(sorted(runs, key=lambda r: (r["family"], r["width"], r["name"]))):
        c = r["curve"]  # solid: fresh data; dashed: Zoology's fixed set
        a2.plot([p["seqs"] / 1e6 for p in c], [100 * p["acc"] for p in c], color=colors[i % len(colors)],
                ls="-" if r.get("fresh_data") else "--", label=r["name"])
    a2.axhline(100 * runs[0]["target"], color="gray", lw=0.8, ls=":")
    a2.set_xlabel("training sequences (M)")
    a2.set_ylabel("test accuracy (%)")
    a2.set_title("test accuracy vs training sequences (dashed: fixed 100K set)")
    a2.set_ylim(-2, 102)
    a2.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "mqar.png", dpi=120)
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("sweep", "job"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--seq-len", type=int, default=512)
        s.add_argument("--kv-pairs", type=int, default=64)
        s.add_argument("--num-train", type=int, default=100_000)
        s.add_argument("--num-test", type=int, default=3_000)
        s.add_argument("--eval-every", type=int, default=250)
        s.add_argument("--warmup", type=int, default=100)
        s.add_argument("--min-lr", type=float, default=1e-5)
        s.add_argument("--target", type=float, default=0.99)
        s.add_argument("--head-dim", type=int, default=64, help="num_heads = width // head_dim")
        s.add_argument("--seed", type=int, default=42)
        s.add_argument("--resume", action="store_true", help="continue from OUT/ckpt/<job>.pt when present")
        s.add_argument("--fresh-data", action="store_true",
                       help="regenerate the training set every epoch (no repeated sequences) instead of Zoology's fixed set")
        s.add_argument("--override", action="append", help="extra Hydra override, e.g. model.use_short_conv=false")
    s = sub.choices["sweep"]
    s.add_argument("--job", action="append", required=True, help="family/width/lr/recipe/seconds, in priority order")
    s.add_argument("--budget", type=float, required=True, help="seconds for the whole sweep")
    s.add_argument("--workers", type=int, default=4, help="job processes sharing the GPU")
    s.add_argument("--min-job-seconds", type=float, default=30)
    s.add_argument("--grace", type=float, default=20, help="seconds past --budget before running jobs are stopped")
    s = sub.choices["job"]
    s.add_argument("--spec", required=True)
    s.add_argument("--eval-batch", type=int, default=500)
    s.add_argument("--probe-steps", type=int, default=13)
    s.add_argument("--step-fill", type=float, default=0.85, help="share of the timed budget given to planned steps")
    s.add_argument("--max-steps", type=int, default=0)
    s.add_argument("--ckpt-max-width", type=int, default=64)
    s = sub.add_parser("report")
    s.add_argument("--results", required=True)
    s.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    s.add_argument("--command", action="append", help="a command that made the runs (repeatable)")
    s.add_argument("--summary", action="append", help="a line of findings above the tables (repeatable)")
    s.add_argument("--note", action="append", help="a line of notes under the tables (repeatable)")
    args = p.parse_args()
    if args.cmd == "sweep":
        sweep(args)
    elif args.cmd == "job":
        j = parse_spec(args.spec)
        result = run_job(j, args)
        print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    else:
        report(args)


if __name__ == "__main__":
    main()
