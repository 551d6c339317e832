"""Tiny models and tiny lm-eval tasks that the tests make themselves (no dataset is ever downloaded)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deltanet import DeltaNetConfig, DeltaNetForCausalLM  # noqa: E402

TEXTS = [
    "The delta rule updates a fast weight memory with the error of its own prediction.",
    "Linear attention keeps a state of fixed size, so generation costs the same at every step.",
    "A chunkwise algorithm processes blocks of tokens with matrix multiplications.",
    "Short convolutions mix neighbouring tokens before the keys and queries are formed.",
]


def tiny_model(family: str = "deltanet", seed: int = 0) -> DeltaNetForCausalLM:
    torch.manual_seed(seed)
    cfg = DeltaNetConfig(vocab_size=32000, hidden_size=32, num_layers=2, num_heads=2, family=family,
                         backend="torch", initializer_range=0.2)  # a wide init: confident, distinct predictions
    return DeltaNetForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from datamodules.tokenizer import load_tokenizer
    return load_tokenizer()


def write_tasks(root: Path) -> Path:
    """Three lm-eval tasks over local jsonl files: multiple choice, rolling perplexity, generation."""
    root.mkdir(parents=True, exist_ok=True)
    choice = [{"q": "What does the delta rule correct?", "choices": ["its prediction error", "the weather"],
               "label": 0},
              {"q": "Which state does linear attention keep?", "choices": ["a growing cache", "a fixed-size state",
                                                                           "none"], "label": 1},
              {"q": "What do chunkwise kernels use?", "choices": ["matrix multiplications", "sorting"], "label": 0}]
    rolling = [{"text": t} for t in TEXTS]
    gen = [{"prompt": "The delta rule", "answer": " updates"}, {"prompt": "Linear attention keeps", "answer": " a"}]
    for name, rows in (("choice", choice), ("rolling", rolling), ("gen", gen)):
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    common = lambda name: (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / (name + '.jsonl')}\n"
                           "test_split: test\n")
    (root / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n" + common("choice") + "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (root / "tiny_rolling.yaml").write_text(
        "task: tiny_rolling\n" + common("rolling") + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (root / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common("gen") + "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")
    return root
