"""On CUDA: the evaluation's bf16 autocast path (Triton chunk kernel) against the float32 torch path."""
from __future__ import annotations

import pytest
import torch

from tests.evaluation.conftest import TEXTS

pytestmark = pytest.mark.gpu
pytest.importorskip("lm_eval")


def _model(family: str, backend: str):
    from deltanet import DeltaNetConfig, DeltaNetForCausalLM
    torch.manual_seed(0)
    return DeltaNetForCausalLM(DeltaNetConfig(hidden_size=256, num_layers=4, num_heads=2, family=family,
                                              backend=backend)).eval()


@pytest.mark.parametrize("family", ["deltanet", "deltanet_hybrid_swa"])
def test_bf16_triton_scores_match_float32_torch(family, tokenizer):
    from lm_eval.api.instance import Instance

    from evaluation.lm_eval_adapter import DeltaNetLM

    ref_model = _model(family, "torch")
    fast_model = _model(family, "triton")
    fast_model.load_state_dict(ref_model.state_dict())
    pairs = [(t[:30], t[30:]) for t in TEXTS] + [(" ".join(TEXTS) * 20, " the end")]  # one > 2048 tokens
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0) for p in pairs]
    rolling = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(" ".join(TEXTS) * 30,), idx=0)]
    ref = DeltaNetLM(model=ref_model, tokenizer=tokenizer, device="cuda", dtype="float32", progress=False)
    fast = DeltaNetLM(model=fast_model, tokenizer=tokenizer, device="cuda", dtype="auto", progress=False)
    assert fast.dtype == torch.bfloat16
    for (a, _), (b, _) in zip(fast.loglikelihood(reqs), ref.loglikelihood(reqs)):
        assert a == pytest.approx(b, rel=2e-2, abs=0.5)
    (ra,), (rb,) = fast.loglikelihood_rolling(rolling), ref.loglikelihood_rolling(rolling)
    assert ra == pytest.approx(rb, rel=1e-2)
    gen = [Instance(request_type="generate_until", doc={}, arguments=(t, {"until": ["\n"], "max_gen_toks": 8}),
                    idx=0) for t in TEXTS]
    assert all(isinstance(s, str) for s in fast.generate_until(gen))
