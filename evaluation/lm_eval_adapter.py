"""The project's model class for lm-evaluation-harness, registered as ``deltanet``.

    lm-eval-deltanet --model deltanet --model_args pretrained=<ckpt or dir> --tasks piqa,hellaswag
    python run.py task=eval ckpt_path=<ckpt or dir>                # the project's command (evaluation/runner.py)

lm-eval 0.4 finds models only in its own registry and reads no entry points, so the stock ``lm_eval`` command cannot
see a class defined outside its source tree.  The project therefore installs ``lm-eval-deltanet``: lm-eval's own
command line with this module imported first (so ``--model deltanet`` resolves).  The stock ``lm_eval --model hf``
works too, on a directory exported by :func:`deltanet.hf.export_hf` (see ``deltanet/hf.py``).

:class:`DeltaNetLM` implements the three request types:

- ``loglikelihood``: ``(context, continuation)`` -> ``(logprob, is_greedy)``; the context is encoded with BOS, as every
  training document starts; a context longer than ``max_length`` is cut on the left.
- ``loglikelihood_rolling``: a whole document in disjoint windows of ``max_length`` predicted tokens (lm-eval's rolling
  windows with context 1, BOS first): ``max_length`` is the context length of the paper's perplexities (2048).
- ``generate_until``: greedy decoding with the model's recurrent state / KV cache, stopped at the task's strings.

Requests are sorted and batched by length (``evaluation.scoring``); progress bars show each request type.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

import lm_eval.models  # noqa: F401  (lm-eval registers its built-in models on this import; keep them)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from evaluation.scoring import continuation_logprobs, resolve_device, resolve_dtype, autocast

log = logging.getLogger(__name__)

__all__ = ["DeltaNetLM", "MODEL_NAME"]

MODEL_NAME = "deltanet"


def _int_or_none(v: Any) -> int | None:
    return None if v in (None, "", "None", "none") else int(v)


@register_model(MODEL_NAME)
class DeltaNetLM(TemplateLM):
    """lm-eval model over :class:`deltanet.DeltaNetForCausalLM`.

    Args:
        pretrained: a Lightning ``.ckpt`` or a save_pretrained directory (loaded by
            :func:`lit_modules.checkpoint.load_model`); or pass ``model`` instead.
        model: an already built model (tests, the project's runner).
        tokenizer: a :class:`datamodules.tokenizer.Tokenizer`, a tokenizer file path, or None for Mistral's 32K
            SentencePiece model (the training default).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``, ...
        dtype: ``"auto"`` (bfloat16 autocast on CUDA, through the Triton chunk kernel; float32 on CPU, torch path),
            ``"bfloat16"``, ``"float16"``, ``"float32"``.
        batch_size: most requests per forward pass (lm-eval's ``--batch_size``; ``"auto"`` means the default 32).
        max_batch_tokens: most padded tokens per forward pass.
        max_length: context length in tokens (rolling-perplexity windows, context truncation); default 2048.
        max_gen_toks: default most generated tokens when a task does not say.
        progress: show progress bars.
    """

    def __init__(self, pretrained: str | None = None, model: torch.nn.Module | None = None, tokenizer: Any = None,
                 device: str | None = "auto", dtype: str | torch.dtype = "auto", batch_size: int | str = 32,
                 max_batch_tokens: int = 65536, max_length: int = 2048, max_gen_toks: int = 256,
                 progress: bool = True, max_batch_size: int | None = None, **kwargs: Any):
        super().__init__()
        if kwargs:
            log.warning("DeltaNetLM ignores unknown arguments %s", sorted(kwargs))
        if (pretrained is None) == (model is None):
            raise ValueError("DeltaNetLM needs exactly one of pretrained=<.ckpt or directory> and model=<module>")
        self._device = resolve_device(device)
        if model is None:
            from lit_modules.checkpoint import load_model
            if not os.path.exists(str(pretrained)):
                raise ValueError(f"pretrained={pretrained!r}: no such checkpoint file or directory")
            model = load_model(pretrained)
        self.model = model.to(self._device).eval()
        self.dtype = resolve_dtype(dtype, self._device)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            from datamodules.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(tokenizer)
        self.tok = tokenizer
        if self.tok.vocab_size > self.model.config.vocab_size:
            raise ValueError(f"tokenizer has {self.tok.vocab_size} tokens, the model only {self.model.config.vocab_size}")
        if self.tok.bos_id is None or self.tok.eos_id is None:
            raise ValueError(f"{self.tok}: the evaluation needs a tokenizer with BOS and EOS tokens")
        bs = 32 if str(batch_size).startswith("auto") else int(batch_size)
        if max_batch_size is not None and str(batch_size).startswith("auto"):
            bs = int(max_batch_size)
        self.batch_size_per_pass = bs
        self.max_batch_tokens = int(max_batch_tokens)
        self._max_length = int(max_length)
        self._max_gen_toks = int(max_gen_toks)
        if self._max_length < 2 or self._max_gen_toks < 1:
            raise ValueError(f"need max_length >= 2 and max_gen_toks >= 1, got {max_length}, {max_gen_toks}")
        self.progress = str(progress).lower() not in ("false", "0", "no")

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """lm-eval's constructor path: ``--model_args`` win over the command line's ``--batch_size`` / ``--device``
        (whose default is ``cuda:0`` even without a GPU; without CUDA that default falls back to the CPU)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s requested but CUDA is not available: using the CPU", extra["device"])
            extra["device"] = "cpu"
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        from lm_eval.utils import simple_parse_args_string
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------ lm-eval's properties
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id  # every training document starts with BOS

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_pass

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return os.path.basename(self.tok.path)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Text -> token ids, with BOS first unless ``add_special_tokens=False``."""
        return self.tok.encode(string, bos=add_special_tokens is not False)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tok.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        return {"model_class": type(self.model).__name__, "model_num_parameters": self.model.num_parameters(),
                "model_dtype": str(self.dtype), "max_length": self.max_length, "tokenizer": self.tokenizer_name}

    # ------------------------------------------------------------------ scoring
    def _score(self, requests: list[tuple[list[int], list[int]]], desc: str, disable_tqdm: bool = False):
        return continuation_logprobs(self.model, requests, batch_size=self.batch_size_per_pass,
                                     max_batch_tokens=self.max_batch_tokens, device=self.device, dtype=self.dtype,
                                     progress=self.progress and not disable_tqdm, desc=desc)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ``[((context, continuation), context_ids, continuation_ids)]`` (context_ids start with BOS)."""
        pairs = []
        for _, ctx, cont in requests:
            if not cont:
                raise ValueError("a loglikelihood request with an empty continuation")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]  # keep the last max_length + 1 tokens
            pairs.append((whole[:-1], list(cont)[-self.max_length:]))
        results = self._score(pairs, "loglikelihood", disable_tqdm)
        for (key, _, _), r in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, r)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's total log-likelihood, in disjoint windows of ``max_length`` predicted tokens."""
        windows, owner = [], []
        for j, req in enumerate(requests):
            (string,) = req.args
            tokens = self.tok_encode(string, add_special_tokens=False)
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                # a disjoint window: context + continuation minus the last token is the model's input
                windows.append(((list(ctx) + list(cont))[:-1], list(cont)))
                owner.append(j)
        scores = self._score(windows, "loglikelihood_rolling (windows)", disable_tqdm)
        totals = [0.0] * len(requests)
        for j, (lp, _) in zip(owner, scores):
            totals[j] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first stop string (the task's ``until`` and EOS)."""
        eos = self.tok.decode([self.eot_token_id]) or None
        prepared = []
        for req in requests:
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kw.get("do_sample") and float(kw.get("temperature", 0.0)) > 0:
                log.warning("generate_until decodes greedily; do_sample/temperature are ignored")
            until = handle_stop_sequences(kw.get("until"), eos=eos)
            n_new = int(kw["max_gen_toks"])
            if n_new >= self.max_length:
                raise ValueError(f"max_gen_toks={n_new} must be below max_length={self.max_length}")
            ids = self.tok_encode(context)[-(self.max_length - n_new):]
            prepared.append((ids, n_new, until))
        out: list[str | None] = [None] * len(requests)
        # batches of rows that share max_gen_toks, longest prompt first
        by_budget: dict[int, list[int]] = {}
        for i in sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0])):
            by_budget.setdefault(prepared[i][1], []).append(i)
        bar = tqdm(total=len(requests), desc="generate_until", disable=not self.progress or disable_tqdm)
        for rows in by_budget.values():
            for s in range(0, len(rows), self.batch_size_per_pass):
                group = rows[s:s + self.batch_size_per_pass]
                self._generate_batch(group, prepared, out)
                bar.update(len(group))
        bar.close()
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out  # type: ignore[return-value]

    def _generate_batch(self, group: list[int], prepared, out: list) -> None:
        """Left-pads the prompts of ``group`` to one length and decodes them together."""
        T = max(len(prepared[i][0]) for i in group)
        n_new = prepared[group[0]][1]
        ids = torch.full((len(group), T), self.eot_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), T), dtype=torch.long)
        for r, i in enumerate(group):
            p = prepared[i][0]
            ids[r, T - len(p):] = torch.as_tensor(p)
            mask[r, T - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with autocast(self.device, self.dtype):
            gen = self.model.generate(ids, max_new_tokens=n_new, temperature=0.0, eos_token_id=self.eot_token_id,
                                      attention_mask=mask if bool((mask == 0).any()) else None)
        for r, i in enumerate(group):
            new = gen[r, T:].tolist()
            if self.eot_token_id in new:
                new = new[:new.index(self.eot_token_id)]
            text = self.tok.decode(new)
            for stop in prepared[i][2]:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out[i] = text
