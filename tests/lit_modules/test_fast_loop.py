"""lit_modules/fast_loop.py: from the same seed it gives the Lightning path's losses and test accuracies, it stops
at the target, writes the run record, and refuses what it does not do."""
from __future__ import annotations

import functools
import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from datamodules.mqar import generate_mqar
from deltanet import DeltaNetConfig
from lit_modules import fast_loop
from lit_modules.fast_loop import evaluate, train_fast
from lit_modules.mqar import MQARModule
from tests.helpers import ROOT, read_scalars, run_py

TINY = ["experiment=mqar", "trainer.accelerator=cpu", "data.vocab_size=128", "model.vocab_size=128",
        "data.seq_len=32", "data.num_kv_pairs=4", "model.hidden_size=32", "data.num_train_examples=32",
        "data.num_test_examples=16", "data.batch_size=8", "trainer.max_steps=10", "trainer.val_check_interval=5",
        "optim.scheduler.warmup_steps=1", "data.train_kv_pairs=[2,4]", "seed=3"]


def _cfg(overrides: list[str], out: Path):
    """The config `python run.py <overrides>` composes, with its run directory at `out`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("fresh", [False, True], ids=["fixed_set", "fresh_set_per_epoch"])
def test_same_seed_same_losses_and_accuracy_as_lightning(tmp_path, fresh):
    """10 steps over 3 epochs (4 batches each), two evaluations: per-step train losses and test metrics match."""
    data = ["data.fresh_train_data=true", "trainer.reload_dataloaders_every_n_epochs=1"] if fresh else []
    run_py(*TINY, *data, f"hydra.run.dir={tmp_path / 'lightning'}", "trainer.log_every_n_steps=1",
           "run_final_validation=false")
    lightning_losses = [v for _, v in read_scalars(tmp_path / "lightning", "train/loss")]
    lightning_curve = json.loads((tmp_path / "lightning" / "mqar_run.json").read_text())["curve"]

    out = train_fast(_cfg([*TINY, *data], tmp_path / "fast"))
    fast_curve = json.loads((tmp_path / "fast" / "mqar_run.json").read_text())["curve"]
    assert len(out["train_losses"]) == len(lightning_losses) == 10
    torch.testing.assert_close(torch.tensor(out["train_losses"]), torch.tensor(lightning_losses), rtol=1e-5, atol=0)
    assert [(p["step"], p["sequences"]) for p in fast_curve] == [(p["step"], p["sequences"]) for p in lightning_curve]
    for f, l in zip(fast_curve, lightning_curve):
        assert f["acc"] == pytest.approx(l["acc"], abs=1e-6) and f["loss"] == pytest.approx(l["loss"], rel=1e-5)
    assert len(set(out["train_losses"])) == 10  # the steps differ: the comparison is not of a constant


TINY_MAD = ["experiment=mad", "trainer.accelerator=cpu", "data.task=selective_copying", "data.seq_len=24",
            "data.num_tokens_to_copy=4", "data.num_train_examples=32", "data.num_test_examples=16", "data.batch_size=8",
            "model.hidden_size=32", "model.num_heads=2", "trainer.max_steps=10", "trainer.val_check_interval=5",
            "seed=3"]


def test_mad_same_losses_and_accuracy_as_lightning(tmp_path):
    """A MAD task in the fast loop: 10 steps over 3 epochs of `MADDataModule`'s epoch orders, as Lightning trains
    them; the final test accuracy is the one `scripts/mad_report.py` reads from either run's metrics.json."""
    run_py(*TINY_MAD, f"hydra.run.dir={tmp_path / 'lightning'}", "trainer.log_every_n_steps=1")
    lightning_losses = [v for _, v in read_scalars(tmp_path / "lightning", "train/loss")]
    lightning_acc = json.loads((tmp_path / "lightning" / "metrics.json").read_text())["metrics"]["val/acc"]

    out = train_fast(_cfg(TINY_MAD, tmp_path / "fast"))
    assert len(out["train_losses"]) == len(lightning_losses) == 10
    torch.testing.assert_close(torch.tensor(out["train_losses"]), torch.tensor(lightning_losses), rtol=1e-5, atol=0)
    assert len(set(out["train_losses"])) == 10
    fast = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert fast["metrics"]["val/acc"] == pytest.approx(lightning_acc, abs=1e-6)
    assert fast["model"]["family"] == "deltanet" and fast["summary"]["tokens_per_s"] > 0


def test_evaluate_is_the_modules_validation_metric():
    torch.manual_seed(0)
    module = MQARModule(DeltaNetConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=1),
                        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    d = generate_mqar(12, 32, 4, vocab_size=128, seed=5)
    batches = [{"input_ids": d["input_ids"][s:s + 5], "labels": d["labels"][s:s + 5]} for s in (0, 5, 10)]
    acc, loss = evaluate(module, batches, nullcontext())
    with torch.no_grad():
        pred = module.model(d["input_ids"]).logits.argmax(-1)  # (B, T)
    rows = torch.arange(12).unsqueeze(1)
    want = (pred[rows, d["query_pos"]] == d["labels"][rows, d["query_pos"] + 1]).float().mean().item()
    with torch.no_grad():
        want_loss = module.model(d["input_ids"], labels=d["labels"]).loss.item()
    assert acc == pytest.approx(want) and loss == pytest.approx(want_loss, rel=1e-5)
    assert module.training  # evaluate hands the module back in training mode


def test_stops_at_the_target_and_writes_record_and_metrics(tmp_path):
    cfg = _cfg([*TINY, "callbacks=early_stopping", "callbacks.early_stopping.stopping_threshold=0.0",
                "trainer.max_steps=40", "trainer.val_check_interval=3"], tmp_path)
    out = train_fast(cfg)
    assert out["global_step"] == 3 and out["reached_target"] and len(out["train_losses"]) == 3
    rec = json.loads((tmp_path / "mqar_run.json").read_text())
    assert [p["step"] for p in rec["curve"]] == [3]
    assert (rec["sequences"], rec["batch_size"], rec["lr"]) == (24, 8, 3e-3)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics"]["val/acc"] == rec["final_acc"] and metrics["summary"]["sequences_per_s"] > 0


def test_refuses_accumulation_and_other_modules(tmp_path):
    with pytest.raises(ValueError, match="without accumulation"):
        train_fast(_cfg([*TINY, "trainer.accumulate_grad_batches=2"], tmp_path))
    with pytest.raises(ValueError, match="trains MQAR"):
        train_fast(_cfg(["experiment=smoke", "trainer.accelerator=cpu"], tmp_path))
    with pytest.raises(ValueError, match="no whole batch"):
        train_fast(_cfg([*TINY, "data.num_train_examples=4"], tmp_path))
    with pytest.raises(ValueError, match="norm only"):
        train_fast(_cfg([*TINY, "trainer.gradient_clip_algorithm=value"], tmp_path))


@pytest.mark.parametrize("fresh", [False, True], ids=["fixed_set", "fresh_set_per_epoch"])
def test_resume_after_a_crash_continues_the_uninterrupted_run(tmp_path, monkeypatch, fresh):
    """A run that dies at step 7 resumes (``ckpt_path=last``) from its step-5 state, mid-epoch, and trains steps
    5..9 on the batches and with the losses, curve and final record of the run that never stopped."""
    data = ["data.fresh_train_data=true", "trainer.reload_dataloaders_every_n_epochs=1"] if fresh else []
    whole = train_fast(_cfg([*TINY, *data], tmp_path / "whole"))
    assert (tmp_path / "whole" / "checkpoints" / "fast_loop.pt").is_file()

    real_step = MQARModule.training_step

    def dies_at_7(self, batch, step):
        if step == 7:
            raise RuntimeError("killed")
        return real_step(self, batch, step)

    monkeypatch.setattr(MQARModule, "training_step", dies_at_7)
    with pytest.raises(RuntimeError, match="killed"):
        train_fast(_cfg([*TINY, *data], tmp_path / "cut"))
    monkeypatch.setattr(MQARModule, "training_step", real_step)
    resumed = train_fast(_cfg([*TINY, *data, "ckpt_path=last"], tmp_path / "cut"))

    assert resumed["global_step"] == whole["global_step"] == 10
    torch.testing.assert_close(torch.tensor(resumed["train_losses"]), torch.tensor(whole["train_losses"]),
                               rtol=1e-6, atol=0)
    a, b = (json.loads((tmp_path / d / "mqar_run.json").read_text()) for d in ("whole", "cut"))
    assert [(p["step"], p["sequences"], p["acc"]) for p in a["curve"]] == \
        [(p["step"], p["sequences"], p["acc"]) for p in b["curve"]]
    assert a["curve"][-1]["loss"] == pytest.approx(b["curve"][-1]["loss"], rel=1e-6)


def test_resume_refuses_a_missing_or_foreign_state(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fast-loop state"):
        train_fast(_cfg([*TINY, "ckpt_path=last"], tmp_path / "none"))
    train_fast(_cfg(TINY, tmp_path / "run"))
    with pytest.raises(ValueError, match=r"model.hidden_size: checkpoint 32, config 64"):
        train_fast(_cfg([*TINY, "model.hidden_size=64", f"ckpt_path={tmp_path / 'run'}"], tmp_path / "other"))
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match="not a task=train_fast state"):
        train_fast(_cfg([*TINY, f"ckpt_path={tmp_path / 'lightning.ckpt'}"], tmp_path / "third"))


def test_cuda_graph_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_graph=true replays CUDA graphs: it needs a CUDA device"):
        train_fast(_cfg([*TINY, "cuda_graph=true"], tmp_path))


GPU_MQAR = ["experiment=mqar", "data.num_train_examples=256", "data.num_test_examples=64", "data.batch_size=32",
            "trainer.max_steps=24", "trainer.val_check_interval=8", "data.train_kv_pairs=[4,8,16,32,64]",
            "data.fresh_train_data=true", "seed=3"]


@pytest.mark.gpu
@pytest.mark.parametrize("extra", [["model=deltanet"], ["model=transformer"],
                                   ["experiment=mad", "data.task=selective_copying", "model=deltanet",
                                    "data.num_train_examples=256", "data.num_test_examples=64",
                                    "data.batch_size=32", "trainer.max_steps=24", "trainer.val_check_interval=8"]],
                         ids=["mqar_deltanet", "mqar_transformer", "mad_deltanet"])
def test_gpu_cuda_graph_steps_train_as_the_eager_loop(tmp_path, monkeypatch, extra):
    """cuda_graph=true: 2 eager steps, a capture, 21 replays over 3 epochs; the per-step losses and
    the test accuracies follow the eager loop's (up to the capturable AdamW's float32 bias corrections); a crash
    after a replayed step resumes, under the graph again, to the same losses."""
    overrides = GPU_MQAR + extra if extra[0] != "experiment=mad" else extra
    eager = train_fast(_cfg(overrides, tmp_path / "eager"))
    graph = train_fast(_cfg([*overrides, "cuda_graph=true"], tmp_path / "graph"))
    assert eager["summary"]["graph_replays"] == 0 and graph["summary"]["graph_replays"] == 22
    torch.testing.assert_close(torch.tensor(graph["train_losses"]), torch.tensor(eager["train_losses"]),
                               rtol=2e-3, atol=0)
    assert len(set(graph["train_losses"])) == 24
    assert abs(graph["metrics"]["val/acc"] - eager["metrics"]["val/acc"]) < 0.02

    real_call, calls = fast_loop.GraphedStep.__call__, {"n": 0}

    def dies_at_step_19(self, batch, step):  # a replayed step: the state saved at step 16 is the one to resume
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("killed")
        return real_call(self, batch, step)

    cut = tmp_path / "cut"
    monkeypatch.setattr(fast_loop.GraphedStep, "__call__", dies_at_step_19)
    with pytest.raises(RuntimeError, match="killed"):
        train_fast(_cfg([*overrides, "cuda_graph=true"], cut))
    monkeypatch.undo()
    resumed = train_fast(_cfg([*overrides, "cuda_graph=true", "ckpt_path=last"], cut))
    torch.testing.assert_close(torch.tensor(resumed["train_losses"]), torch.tensor(graph["train_losses"]),
                               rtol=2e-3, atol=0)
