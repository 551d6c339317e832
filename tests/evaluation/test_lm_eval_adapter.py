"""The lm-eval adapter against the model's own numbers, and a tiny local task end to end through lm-eval."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.evaluation.conftest import TEXTS, tiny_model, write_tasks

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from evaluation.lm_eval_adapter import DeltaNetLM  # noqa: E402
from evaluation.perplexity import document_loglikelihood  # noqa: E402

PAIRS = [("The delta rule", " updates a memory"), ("Linear attention keeps a state", " of fixed size."),
         ("A", " chunkwise algorithm processes blocks of tokens with matrix multiplications"),
         ("Short convolutions mix ", "neighbouring tokens"), ("", "An empty context")]


def _instances(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def _direct_logprob(model, tok, context, continuation):
    """log p(continuation | BOS context) from one full forward pass in float64 (a context's trailing spaces move to
    the continuation, lm-eval's rule for word boundaries)."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    if context:
        whole = tok.encode(context + continuation, bos=True)
        n_ctx = len(tok.encode(context, bos=True))
    else:
        whole = [tok.bos_id] + tok.encode(continuation)
        n_ctx = 1
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    logp = F.log_softmax(logits, -1)
    tgt = torch.tensor(whole[n_ctx:])
    rows = logp[n_ctx - 1:]
    return float(rows.gather(-1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())


@pytest.mark.parametrize("family", ["deltanet", "deltanet_hybrid_global"])
def test_loglikelihood_equals_the_models_own_logprobs(family, tokenizer):
    model = tiny_model(family, seed=1)
    lm = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=4, progress=False)
    got = lm.loglikelihood(_instances("loglikelihood", PAIRS))
    for (ctx, cont), (lp, greedy) in zip(PAIRS, got):
        ref_lp, ref_greedy = _direct_logprob(model, tokenizer, ctx, cont)
        assert lp == pytest.approx(ref_lp, abs=1e-4, rel=1e-5), (ctx, cont)
        assert greedy == ref_greedy
    assert len({round(lp, 3) for lp, _ in got}) == len(PAIRS)  # distinct requests, distinct numbers


def test_greedy_flag_is_true_for_the_models_own_continuation(tokenizer):
    model = tiny_model(seed=2)
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode("The delta rule")])
    out = model.generate(ids, max_new_tokens=4, temperature=0.0)
    cont = tokenizer.decode(out[0, 1:].tolist())[len("The delta rule"):]
    lm = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", progress=False)
    reqs = lm._loglikelihood_tokens([(None, ids[0].tolist(), out[0, ids.shape[1]:].tolist()),
                                     (None, ids[0].tolist(), [int(out[0, -1]) + 1] * 4)])
    assert reqs[0][1] is True and reqs[1][1] is False, cont


@pytest.mark.parametrize("family", ["deltanet", "deltanet_hybrid_global"])
def test_mixed_length_batch_equals_one_request_at_a_time(family, tokenizer):
    model = tiny_model(family, seed=3)
    args = PAIRS + [(t[:20], t[20:]) for t in TEXTS]
    batched = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=16, progress=False)
    single = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=1, progress=False)
    a = batched.loglikelihood(_instances("loglikelihood", args))
    b = single.loglikelihood(_instances("loglikelihood", args))
    for (lp_a, g_a), (lp_b, g_b) in zip(a, b):
        assert lp_a == pytest.approx(lp_b, abs=1e-4, rel=1e-5) and g_a == g_b
    docs = [(t * 3,) for t in TEXTS]
    ra = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=16, max_length=24,
                    progress=False).loglikelihood_rolling(_instances("loglikelihood_rolling", docs))
    rb = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=1, max_length=24,
                    progress=False).loglikelihood_rolling(_instances("loglikelihood_rolling", docs))
    assert ra == pytest.approx(rb, abs=1e-3, rel=1e-5)


@pytest.mark.parametrize("context_length", [7, 16, 1000])
def test_rolling_loglikelihood_equals_the_perplexity_path(context_length, tokenizer):
    model = tiny_model(seed=4)
    text = " ".join(TEXTS)  # ~70 tokens: several windows for the short lengths, one for 1000
    lm = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=3, max_length=context_length,
                    progress=False)
    (rolling,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
    ref = document_loglikelihood(model, tokenizer.encode(text), tokenizer.bos_id, context_length)
    assert rolling == pytest.approx(ref, rel=1e-5)
    assert rolling < 0


def test_generate_until_matches_generation_alone_and_stops(tokenizer):
    model = tiny_model(seed=5)
    prompts = ["The delta rule", "Linear attention keeps a state of", "A"]
    lm = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", batch_size=8, progress=False)
    got = lm.generate_until(_instances("generate_until", [(p, {"until": ["\n"], "max_gen_toks": 5}) for p in prompts]))
    for p, text in zip(prompts, got):
        ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(p)])
        new = model.generate(ids, max_new_tokens=5, temperature=0.0)[0, ids.shape[1]:].tolist()
        ref = tokenizer.decode(new).split("\n")[0]
        assert text == ref
    stop_word = got[0].split()[0] if got[0].split() else None
    if stop_word:
        (cut,) = lm.generate_until(_instances("generate_until", [(prompts[0], {"until": [stop_word],
                                                                               "max_gen_toks": 5})]))
        assert stop_word not in cut and got[0].startswith(cut)


def test_bad_arguments_raise_clear_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        DeltaNetLM(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no such checkpoint"):
        DeltaNetLM(pretrained=str(tmp_path / "missing.ckpt"), tokenizer=tokenizer)
    lm = DeltaNetLM(model=tiny_model(), tokenizer=tokenizer, device="cpu", max_length=8, progress=False)
    with pytest.raises(ValueError, match="max_gen_toks"):
        lm.generate_until(_instances("generate_until", [("x", {"until": ["\n"], "max_gen_toks": 8})]))


def test_tiny_local_tasks_end_to_end_through_lm_eval(tokenizer, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model = tiny_model(seed=6)
    model.save_pretrained(tmp_path / "model")
    tm = TaskManager(include_path=str(write_tasks(tmp_path / "tasks")), include_defaults=False)
    # by registered name, as `--model deltanet --model_args pretrained=<dir>` does
    out = simple_evaluate(model="deltanet", model_args={"pretrained": str(tmp_path / "model"), "device": "cpu",
                                                        "progress": False},
                          tasks=["tiny_choice", "tiny_rolling", "tiny_gen"], task_manager=tm, batch_size=4,
                          log_samples=False, bootstrap_iters=0)
    res = out["results"]
    lm = DeltaNetLM(model=model, tokenizer=tokenizer, device="cpu", progress=False)
    # accuracy by hand: the choice of highest log-likelihood, per question
    import json
    rows = [json.loads(l) for l in open(tmp_path / "tasks" / "choice.jsonl")]
    correct = []
    for r in rows:
        ctx = f"Question: {r['q']}\nAnswer:"
        lps = [lp for lp, _ in lm.loglikelihood(_instances("loglikelihood", [(ctx, " " + c) for c in r["choices"]]))]
        correct.append(max(range(len(lps)), key=lps.__getitem__) == r["label"])
    assert res["tiny_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    # word perplexity by hand: exp(-sum loglikelihood / words)
    lls = [document_loglikelihood(model, tokenizer.encode(t), tokenizer.bos_id, 2048) for t in TEXTS]
    words = sum(len(t.split()) for t in TEXTS)
    assert res["tiny_rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-4)
    assert 0.0 <= res["tiny_gen"]["exact_match,none"] <= 1.0
    assert out["config"]["max_length"] == 2048


@pytest.mark.slow  # ~40 s: lm-eval's command line indexes all of its 14K task configs
def test_lm_eval_command_line_with_the_deltanet_model(tmp_path, monkeypatch, capsys):
    """`lm-eval-deltanet --model deltanet --model_args pretrained=<dir>` (lm-eval's own CLI, our model registered)."""
    import sys

    from evaluation.cli import main

    tiny_model(seed=8).save_pretrained(tmp_path / "model")
    tasks = write_tasks(tmp_path / "tasks")
    monkeypatch.setattr(sys, "argv", ["lm-eval-deltanet", "--model", "deltanet", "--model_args",
                                      f"pretrained={tmp_path / 'model'},progress=false",
                                      "--tasks", "tiny_choice", "--include_path", str(tasks), "--batch_size", "4",
                                      "--output_path", str(tmp_path / "out")])
    main()
    assert "tiny_choice" in capsys.readouterr().out
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_length_batches_respect_both_caps_and_the_head_chunks_change_nothing():
    from evaluation.scoring import continuation_logprobs, length_batches

    lengths = [5, 40, 3, 17, 17, 60, 1, 9]
    batches = length_batches(lengths, batch_size=3, max_batch_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0, 64)
    model = tiny_model(seed=9)
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(3, 32000, (n,), generator=g).tolist(), torch.randint(3, 32000, (k,), generator=g).tolist())
            for n, k in ((9, 4), (20, 20), (3, 1), (14, 6))]
    reqs = [(inp, inp[len(inp) - len(t) + 1:] + t[-1:]) for inp, t in reqs]  # targets follow the inputs
    a = continuation_logprobs(model, reqs, batch_size=4, head_chunk=2)
    b = continuation_logprobs(model, reqs, batch_size=1)
    assert [x for x, _ in a] == pytest.approx([x for x, _ in b], abs=1e-4)
    with pytest.raises(ValueError, match="len\\(targets\\)"):
        continuation_logprobs(model, [([1, 2], [3, 4, 5])])
