"""deltanet/hf.py: the saved model loads through transformers' Auto classes with the same logits and generation."""
from __future__ import annotations

import pytest
import torch

from tests.evaluation.conftest import tiny_model

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ["deltanet", "deltanet_hybrid_global", "transformer"])
def test_save_pretrained_directory_loads_through_auto_classes_with_the_same_logits(family, tmp_path):
    import deltanet.hf  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM

    from deltanet import DeltaNetForCausalLM

    model = tiny_model(family, seed=11)
    model.save_pretrained(tmp_path / "m")
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == "deltanet"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert type(hf).__name__ == "DeltaNetHFForCausalLM"
    x = torch.randint(3, 32000, (2, 23))
    with torch.no_grad():
        ref = model(x).logits
        got = hf(x).logits
        assert torch.equal(got, ref)
        loss = hf(x, labels=x).loss
        assert loss == pytest.approx(float(model(x, labels=x).loss), rel=1e-6)
    # and back: an HF save loads in our own loader
    hf.save_pretrained(tmp_path / "hf")
    back = DeltaNetForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(back(x).logits, ref)


@pytest.mark.parametrize("family", ["deltanet", "deltanet_hybrid_global"])
def test_hf_generate_equals_our_generate_with_left_padding(family):
    from deltanet.hf import DeltaNetHFForCausalLM

    model = tiny_model(family, seed=12)
    hf = DeltaNetHFForCausalLM.from_deltanet(model)
    ids = torch.randint(3, 32000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # the second prompt is 5 tokens, padded on the left
    ids[1, :4] = 2
    ours = model.generate(ids, max_new_tokens=6, temperature=0.0, attention_mask=mask)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                         pad_token_id=2)
    assert torch.equal(theirs, ours)
    # the padded row continues as it would alone
    alone = model.generate(ids[1:, 4:], max_new_tokens=6, temperature=0.0)
    assert torch.equal(ours[1, 9:], alone[0, 5:])


def test_export_hf_loads_with_remote_code_and_the_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datamodules.tokenizer import load_tokenizer
    from deltanet.hf import export_hf

    model = tiny_model(seed=13)
    out = export_hf(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    x = torch.randint(3, 32000, (1, 17))
    with torch.no_grad():
        assert torch.equal(hf(x).logits, model(x).logits)
    tok = AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer()
    text = "The delta rule updates a fast weight memory."
    assert tok(text)["input_ids"] == ours.encode(text, bos=True)


def test_lm_eval_hf_model_on_the_export_matches_the_deltanet_model(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from deltanet.hf import export_hf
    from evaluation.lm_eval_adapter import DeltaNetLM
    from tests.evaluation.conftest import write_tasks

    model = tiny_model(seed=14)
    out = export_hf(model, tmp_path / "hf")
    tm = TaskManager(include_path=str(write_tasks(tmp_path / "tasks")), include_defaults=False)
    kw = dict(task_manager=tm, log_samples=False, bootstrap_iters=0)
    hf_args = {"pretrained": str(out), "trust_remote_code": True, "device": "cpu", "dtype": "float32"}
    ours = simple_evaluate(model=DeltaNetLM(model=model, device="cpu", progress=False),
                           tasks=["tiny_choice", "tiny_rolling"], **kw)["results"]
    # lm-eval's hf model encodes contexts with the tokenizer's BOS, as ours does
    theirs = simple_evaluate(model="hf", model_args=hf_args, batch_size=2, tasks=["tiny_choice"], **kw)["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert theirs["tiny_choice"][metric] == pytest.approx(ours["tiny_choice"][metric])
    # for rolling perplexity it puts its prefix BOS before a text already encoded with BOS, unless add_bos_token=False
    theirs = simple_evaluate(model="hf", model_args={**hf_args, "add_bos_token": False}, batch_size=2,
                             tasks=["tiny_rolling"], **kw)["results"]
    assert theirs["tiny_rolling"]["word_perplexity,none"] == pytest.approx(
        ours["tiny_rolling"]["word_perplexity,none"], rel=1e-4)
