"""MQAR's and MAD's fast loop: `MQARModule`'s training without Lightning's work around each step.

    python run.py task=train_fast experiment=mqar model=deltanet callbacks=early_stopping
    python run.py task=train_fast experiment=mad data.task=selective_copying model=deltanet

A 2-layer width-64 MQAR model is launch-bound on a GPU: its kernels are tiny, so what the host does between them
sets the speed. This loop trains the same objects as ``python run.py experiment=mqar`` (the `MQARDataModule` and
its loaders, or `MADDataModule`'s, the `MQARModule` with its `training_step` loss, its AdamW parameter groups and schedule from
`configure_optimizers`, the same seed and the same batch order, `EpochShuffle`, hence the same losses) and
leaves out what a step does not need: no hooks, logging or progress bar per step, and no host synchronisation per
step (the loss has fixed shapes; the non-finite check runs at each evaluation instead of every step). The data stay
on the GPU (``data.device=auto``). Every ``trainer.val_check_interval`` steps it evaluates the whole test set with
`MQARModule.validation_step` (Zoology's accuracy), writes the run record (``lit_module.record``) and stops once the
accuracy reaches ``callbacks.early_stopping.stopping_threshold`` (with ``callbacks=early_stopping``), or at
``trainer.max_steps`` / ``trainer.max_time``. One device, no gradient accumulation: for that, use Lightning
(``task=train``).

With ``cuda_graph=true`` (CUDA only) the step after two eager warm-up steps is captured into one CUDA graph:
forward, backward, clipping and the AdamW update, with AdamW made capturable (its step counts on the GPU, its lr a
GPU tensor that the schedule fills). Every later step copies its batch into the graph's input buffers and replays
it: one launch instead of the few hundred a tiny model's step makes from Python. A batch of another shape (none
with the MQAR and MAD loaders, which drop their last partial batch) runs eagerly. The losses are the eager loop's
up to the capturable AdamW's float32 bias corrections.

With ``callbacks.model_checkpoint`` configured (the default callbacks), each evaluation also saves the loop's whole
state (model, optimizer, schedule, step, epoch and position in it, curve, clock) to
``<run dir>/checkpoints/fast_loop.pt``. The same command with ``ckpt_path=last`` (or the path of such a file)
continues from it, on the batches the uninterrupted run would have seen next; ``trainer.max_time`` counts the
training seconds of all the pieces together. A run killed between evaluations loses the steps since the last one.
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lit_modules.causal_lm import NonFiniteTrainingError
from lit_modules.mqar import MQARModule, add_point, run_record, write_record

__all__ = ["train_fast", "evaluate"]


def _seconds(max_time: Any) -> float:
    """Lightning's ``trainer.max_time`` as "DD:HH:MM:SS" (or a dict of timedelta fields) -> seconds; None = no limit."""
    if max_time is None:
        return float("inf")
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (int(x) for x in max_time.split(":"))
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    import datetime

    return datetime.timedelta(**dict(max_time)).total_seconds()


@torch.no_grad()
def evaluate(module: MQARModule, loader, autocast) -> tuple[float, float]:
    """(accuracy, loss) over the query positions of every batch of `loader`: `MQARModule`'s validation metric."""
    module.eval()
    for i, batch in enumerate(loader):
        with autocast:
            module.validation_step(batch, i)
    acc, loss = module.val_acc.compute().item(), module.val_loss.compute().item()
    module.val_acc.reset()
    module.val_loss.reset()
    module.train()
    return acc, loss


def train_fast(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg`` (an ``experiment=mqar`` config) in the fast loop; returns the final metrics and per-step losses."""
    import lightning as L
    from hydra.utils import get_class, instantiate

    from lit_modules.recipe import apply_recipe

    plan = apply_recipe(cfg)  # the same checks and derived steps as task=train
    if plan.world_size != 1 or plan.accumulate != 1:
        raise ValueError(f"task=train_fast runs on one device without accumulation; got {plan.describe()}. "
                         "Use task=train (Lightning) for that.")
    if not issubclass(get_class(str(cfg.lit_module._target_)), MQARModule):
        raise ValueError(f"task=train_fast trains MQAR and MAD (experiment=mqar or experiment=mad); lit_module is "
                         f"{cfg.lit_module._target_}")
    tr = cfg.trainer
    on_gpu = tr.accelerator in ("gpu", "cuda") or (tr.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    precision = str(tr.precision) if tr.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    if precision not in ("bf16-mixed", "32-true", "32"):
        raise ValueError(f"task=train_fast supports trainer.precision auto, bf16-mixed or 32-true, got {precision}")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext())

    # The construction order of run.py's train(), so the random draws (model init, then the loaders) are the same.
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    module: MQARModule = instantiate(cfg.lit_module, model_config=instantiate(cfg.model)).to(device)
    dm.setup()
    opt = module.configure_optimizers()
    optimizer, scheduler = (opt["optimizer"], opt["lr_scheduler"]["scheduler"]) if isinstance(opt, dict) \
        else (opt, None)
    clip = tr.get("gradient_clip_val")
    if clip and tr.get("gradient_clip_algorithm", "norm") not in (None, "norm"):
        raise ValueError(f"task=train_fast clips the gradient norm only; got {tr.gradient_clip_algorithm}")
    every, max_steps, deadline = int(tr.val_check_interval), int(tr.max_steps), _seconds(tr.get("max_time"))
    stop = (cfg.get("callbacks") or {}).get("early_stopping")
    target = float(stop.stopping_threshold) if stop is not None and stop.get("stopping_threshold") is not None else None
    cuda = device if device.type == "cuda" else None
    sync = (lambda: torch.cuda.synchronize(device)) if cuda is not None else (lambda: None)

    graph = bool(cfg.get("cuda_graph", False))
    if graph and cuda is None:
        raise ValueError("cuda_graph=true replays CUDA graphs: it needs a CUDA device (trainer.accelerator=gpu)")
    losses = torch.zeros(max_steps, device=device)  # per step, read once at the end (no host sync per step)
    step, epoch, sequences, tokens, seconds, reached = 0, 0, 0, 0, 0.0, False
    position = 0  # batches of the current epoch already trained on
    save_to = Path(cfg.paths.output_dir) / "checkpoints" / CHECKPOINT if cfg.get("callbacks", {}).get(
        "model_checkpoint") is not None else None
    resume_from = checkpoint_path(cfg)
    if resume_from is not None:
        state = torch.load(resume_from, map_location="cpu", weights_only=False)  # a file this loop wrote
        _check_resumable(state, module, resume_from)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        _eager_optimizer(optimizer)  # a state saved under cuda_graph=true holds tensor lrs and GPU step counts
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        sequences, tokens, seconds = state["sequences"], state["tokens"], state["seconds"]
        module.curve = list(state["curve"])
        done = state["losses"].to(device)[:max_steps]
        losses[:len(done)] = done
        torch.set_rng_state(state["rng"]["cpu"])
        if cuda is not None and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], cuda)
        print(f"Resumed from {resume_from} at step {step} (epoch {epoch}, batch {position})", flush=True)
        reached = target is not None and bool(module.curve) and module.curve[-1]["acc"] >= target
    train_step = (GraphedStep(module, optimizer, clip, precision == "bf16-mixed") if graph
                  else EagerStep(module, optimizer, clip, autocast))
    t_segment = time.perf_counter()
    while step < max_steps and not reached and seconds < deadline:
        dm.set_epoch(epoch)
        loader = dm.train_dataloader()  # the loader Lightning iterates in this epoch
        if len(loader) == 0:
            raise ValueError(f"data.num_train_examples={dm.num_train_examples} < data.batch_size={dm.batch_size}: "
                             "no whole batch to train on")
        for i, batch in enumerate(loader):
            if i < position:  # a resumed epoch: its first batches were trained on before the checkpoint
                continue
            position = i + 1
            if batch["input_ids"].device != device:  # sets kept on another device (data.device)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = train_step(batch, step)
            if scheduler is not None:
                scheduler.step()
            losses[step] = loss.detach()
            step += 1
            sequences += batch["input_ids"].shape[0]
            tokens += batch["input_ids"].numel()
            if step % every and step < max_steps:
                continue
            sync()
            seconds += time.perf_counter() - t_segment
            train_loss = module.train_loss.compute().item()
            module.train_loss.reset()
            if not torch.isfinite(torch.tensor(train_loss)):
                raise NonFiniteTrainingError(f"the train loss of steps {step - every}..{step - 1} is {train_loss}: "
                                             "lower optim.optimizer.lr or raise optim.scheduler.warmup_steps")
            acc, val_loss = evaluate(module, dm.val_dataloader(), autocast)
            add_point(module.curve, {"step": step, "sequences": sequences, "seconds": round(seconds, 2), "acc": acc,
                                     "loss": val_loss})
            print(f"MQAR step {step}: test accuracy {acc:.4f}, test loss {val_loss:.4f}, train loss {train_loss:.4f}, "
                  f"{sequences / max(seconds, 1e-9):.0f} sequences/s", flush=True)
            if module.record is not None:
                write_record(module.record, run_record(module, dm, dm.batch_size, cuda))
            reached = target is not None and acc >= target
            if save_to is not None:
                at_end = position == len(loader)  # the next step starts the next epoch
                _save(save_to, module, optimizer, scheduler, losses[:step], cuda, step=step,
                      epoch=epoch + 1 if at_end else epoch, position=0 if at_end else position,
                      sequences=sequences, tokens=tokens, seconds=seconds)
            t_segment = time.perf_counter()
            if reached or step >= max_steps or seconds >= deadline:
                break
        else:
            epoch, position = epoch + 1, 0
            continue
        if position == len(loader):
            epoch, position = epoch + 1, 0
    metrics = {"val/acc": module.curve[-1]["acc"], "val/loss": module.curve[-1]["loss"]} if module.curve else {}
    out = {"metrics": metrics, "global_step": step, "summary": {"sequences_per_s": sequences / max(seconds, 1e-9),
           "tokens_per_s": tokens / max(seconds, 1e-9), "train_seconds": seconds,
           "graph_replays": getattr(train_step, "replays", 0)},
           "plan": dataclasses.asdict(plan), "model": dataclasses.asdict(module.model_config),
           "overrides": _overrides(), "reached_target": reached}
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.paths.output_dir) / "metrics.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"Run directory: {cfg.paths.output_dir}")
    return {**out, "train_losses": losses[:step].tolist()}


class EagerStep:
    """One optimizer step as Lightning's automatic optimisation takes it: the module's ``training_step`` loss (and
    its train/loss meter), backward, norm clipping, AdamW."""

    def __init__(self, module: MQARModule, optimizer: torch.optim.Optimizer, clip: float | None, autocast):
        self.module, self.optimizer, self.clip, self.autocast = module, optimizer, clip, autocast

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        with self.autocast:
            loss = self.module.training_step(batch, step)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), float(self.clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class GraphedStep(EagerStep):
    """`EagerStep` captured once into a CUDA graph and replayed (``cuda_graph=true``, see the module docstring).

    Steps 1 and 2 run eagerly on a side stream (Triton compiles, cuBLAS and AdamW's state allocate); step 3 is
    captured from static copies of its batch and replayed; later steps refill those copies and replay.  The meter
    is updated outside the graph from its static loss and target count."""

    WARMUP = 2

    def __init__(self, module: MQARModule, optimizer: torch.optim.Optimizer, clip: float | None, bf16: bool):
        super().__init__(module, optimizer, clip,
                         torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if bf16 else nullcontext())
        device = next(module.parameters()).device
        for group in optimizer.param_groups:  # AdamW's step in the graph: device step counts and lr
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), device=device)  # the schedule fill_()s it
        for state in optimizer.state.values():  # a resumed optimizer: its step counts move to the GPU
            if "step" in state:
                state["step"] = state["step"].to(device=device, dtype=torch.float32)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.static_shapes: dict = {}
        self.eager_steps, self.replays = 0, 0

    def _shapes(self, batch):
        return {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        if self.graph is not None and self._shapes(batch) == self.static_shapes:
            for k, v in batch.items():
                self.static[k].copy_(v, non_blocking=True)
            self.graph.replay()
            self.replays += 1
            self.module.train_loss.update(self.loss.float(), self.targets)
            self.module._window_tokens += batch["input_ids"].numel()  # what training_step counts
            return self.loss
        if self.graph is not None or self.eager_steps < self.WARMUP:  # warm-up, or a batch of another shape
            self.eager_steps += 1
            self.optimizer.zero_grad(set_to_none=True)  # after a capture .grad holds the graph's last gradients
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = super().__call__(batch, step)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        self.static = {k: v.clone() for k, v in batch.items()}
        self.static_shapes = self._shapes(self.static)
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients in its own pool
        params = [p for p in self.module.parameters() if p.requires_grad]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with self.autocast:
                loss = self.module._loss(self.static)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(params, float(self.clip))
            self.optimizer.step()
            self.loss, self.targets = loss.detach(), self.module._targets(self.static)
        self.graph = graph
        graph.replay()  # capturing ran nothing: this is the step's work
        self.replays += 1
        self.module.train_loss.update(self.loss.float(), self.targets)
        self.module._window_tokens += batch["input_ids"].numel()
        return self.loss


CHECKPOINT = "fast_loop.pt"


def checkpoint_path(cfg: DictConfig) -> Path | None:
    """The fast-loop state to resume from: ``ckpt_path`` = ``last`` (this run directory's
    checkpoints/fast_loop.pt), a run directory (its checkpoints/fast_loop.pt) or such a file; None without one."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    p = Path(cfg.paths.output_dir) if str(ckpt) == "last" else Path(str(ckpt)).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no fast-loop state at {p} (task=train_fast writes "
                                f"<run dir>/checkpoints/{CHECKPOINT} at each evaluation with callbacks.model_checkpoint "
                                "configured)")
    return p


def _check_resumable(state: Any, module: MQARModule, path: Path) -> None:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT:
        raise ValueError(f"ckpt_path={path} is not a task=train_fast state (Lightning checkpoints resume with "
                         "task=train)")
    want = dataclasses.asdict(module.model_config)
    diff = [f"model.{k}: checkpoint {state['model'].get(k)!r}, config {want.get(k)!r}"
            for k in sorted(set(state["model"]) | set(want)) if state["model"].get(k) != want.get(k)]
    if diff:
        raise ValueError(f"ckpt_path={path} does not match the config ({'; '.join(diff)}): resume with the run's own "
                         "overrides")


def _eager_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer as `EagerStep` takes it (`GraphedStep` makes it capturable again): float lrs, host step counts."""
    for group in optimizer.param_groups:
        group["lr"] = float(group["lr"])
        group["capturable"] = False
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].detach().to("cpu", torch.float32)


def _save(path: Path, module, optimizer, scheduler, losses, cuda, **counters: Any) -> None:
    """Write the loop's state whole or not at all (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT, "model": dataclasses.asdict(module.model_config), "module": module.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
             "curve": module.curve, "losses": losses.detach().cpu(), **counters,
             "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(cuda) if cuda else None}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not under @hydra.main
        return []
