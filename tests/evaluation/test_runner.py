"""`python run.py task=eval`: the table beside the checkpoint, perplexities, TensorBoard, and the missing-data message."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.evaluation.conftest import TEXTS, tiny_model, write_tasks
from tests.helpers import ROOT, read_scalars, run_py

pytest.importorskip("lm_eval")


def _fake_run(tmp_path: Path):
    """A run directory as training leaves it: .hydra/config.yaml (a local corpus, prepared) and checkpoints/last.ckpt."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 3))
    (corpus / "val.jsonl").write_text("".join(json.dumps({"text": t[::-1] + " " + t}) + "\n" for t in TEXTS))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "data=local_files",
                                           f"data.source.train=[{corpus / 'train.jsonl'}]",
                                           f"data.source.validation={corpus / 'val.jsonl'}",
                                           f"data.cache_dir={tmp_path / 'tokenized'}", "data.seq_len=16",
                                           "data.num_workers=0", "data.num_proc=1", "data.progress=false"])
    instantiate(cfg.data).prepare_data()
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    model = tiny_model(seed=7)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_config": model.config.to_dict()}, "global_step": 7},
               run / "checkpoints" / "last.ckpt")
    return run, model, cfg


def test_run_py_task_eval_writes_the_table_perplexities_and_tensorboard(tmp_path):
    run, model, cfg = _fake_run(tmp_path)
    tasks = write_tasks(tmp_path / "tasks")
    long_file = tmp_path / "long.txt"
    long_file.write_text(" ".join(TEXTS * 2))
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_py("task=eval", f"ckpt_path={ckpt}", "eval.tasks=[tiny_choice,tiny_rolling]",
                  f"eval.include_path={tasks}", "eval.include_defaults=false", "eval.progress=false",
                  f"eval.long_file={long_file}", "eval.long_max_len=64", "eval.long_bin_size=16",
                  "eval.context_length=32", f"hydra.run.dir={tmp_path / 'eval_run'}", timeout=300)
    assert "Evaluation written to" in proc.stdout
    report = json.loads((run / "checkpoints" / "last_eval.json").read_text())
    table = report["table"]
    assert report["settings"]["context_length"] == 32 and report["settings"]["global_step"] == 7
    assert {"tiny_choice/acc", "tiny_rolling/word_perplexity", "val/ppl", "long/ppl@64"} <= set(table)
    assert (run / "checkpoints" / "last_eval.md").read_text().count("|") > 10
    assert (run / "checkpoints" / "last_eval_ppl_by_position.png").stat().st_size > 1000
    # validation perplexity: the model's own training loss over the prepared split's windows of seq_len
    from datamodules.packed import TokenFile
    from datamodules.prepare import load_meta
    tokens = np.asarray(TokenFile(cfg.data.cache_dir, "validation", load_meta(cfg.data.cache_dir)["dtype"]).tokens)
    windows = torch.from_numpy(tokens[:len(tokens) // 16 * 16].astype(np.int64)).view(-1, 16)
    with torch.no_grad():
        loss = model(windows, labels=windows).loss
    assert table["val/ppl"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    # rolling perplexity used the configured context length: lm-eval's word perplexity from our document path
    from datamodules.tokenizer import load_tokenizer
    from evaluation.perplexity import document_loglikelihood
    tok = load_tokenizer()
    lls = [document_loglikelihood(model, tok.encode(t), tok.bos_id, 32) for t in TEXTS]
    assert table["tiny_rolling/word_perplexity"] == pytest.approx(
        math.exp(-sum(lls) / sum(len(t.split()) for t in TEXTS)), rel=1e-4)
    scalars = read_scalars(run / "tensorboard", "eval/val/ppl")
    assert scalars == [(7, pytest.approx(table["val/ppl"], rel=1e-5))]


def test_missing_dataset_says_what_to_download(tmp_path):
    from lm_eval.tasks import TaskManager

    from evaluation.runner import MissingDatasetError, check_task_datasets, set_offline

    (tmp_path / "remote.yaml").write_text(
        "task: needs_remote\ndataset_path: someone/a-dataset-not-in-the-cache\ndataset_name: cfg1\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: q\ndoc_to_choice: '{{[a, b]}}'\n"
        "doc_to_target: 0\n")
    write_tasks(tmp_path / "local")
    tm = TaskManager(include_path=[str(tmp_path), str(tmp_path / "local")], include_defaults=False)
    set_offline(True)
    check_task_datasets(["tiny_choice"], tm)  # local files: fine offline
    with pytest.raises(MissingDatasetError) as e:
        check_task_datasets(["tiny_choice", "needs_remote"], tm)
    msg = str(e.value)
    assert "needs_remote" in msg and "someone/a-dataset-not-in-the-cache" in msg and "tiny_choice:" not in msg
    assert "datasets.load_dataset('someone/a-dataset-not-in-the-cache', 'cfg1')" in msg and "cache" in msg
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        check_task_datasets(["no_such_task"], tm)


def test_table_follows_the_papers_column_order():
    from evaluation.report import PAPER_COLUMNS, build_table, table_markdown

    results = {"fda": {"contains,none": 0.1}, "piqa": {"acc,none": 0.6, "acc_norm,none": 0.61},
               "wikitext": {"word_perplexity,none": 30.0, "byte_perplexity,none": 1.8},
               "lambada_openai": {"perplexity,none": 40.0, "acc,none": 0.3},
               "mine": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "mine"}}
    table = build_table(results, {"val/ppl": 12.0})
    assert list(table) == ["Wiki. ppl", "LMB. ppl", "LMB. acc", "PIQA acc", "Avg.", "FDA", "mine/acc", "val/ppl"]
    assert table["PIQA acc"] == pytest.approx(60.0) and table["Avg."] == pytest.approx(45.0)
    assert table["Wiki. ppl"] == 30.0
    md = table_markdown(table, "t")
    assert "| Wiki. ppl | LMB. ppl |" in md and "| 30.00 | 40.00 | 30.0 | 60.0 |" in md
    assert [c for c, *_ in PAPER_COLUMNS][:3] == ["Wiki. ppl", "LMB. ppl", "LMB. acc"]
