"""Stateful generation.

``model.generate(input_ids, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None)`` runs the
prompt once (prefill) and then one token per step, carrying per layer: the delta-rule state (H, K, V) and the
short-convolution states for DeltaNet layers, a KV cache for global attention, a ring buffer of ``attn_window``
slots for sliding-window attention.  Memory per sequence is therefore constant in the context length except for
global-attention layers, whose cache is a buffer written in place and doubled when full (a cache passed back to the
model is updated, not copied: keep a ``copy.deepcopy`` to branch from it).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["GenerationMixin", "sample_next"]


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits: (B, V) -> next token ids (B,). temperature 0 = greedy; top_k 0 / top_p 1 = no truncation."""
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked before it already reach top_p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


class GenerationMixin:
    """Adds :meth:`generate` to :class:`deltanet.DeltaNetForCausalLM`."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,  # (B, T) long; rows of different lengths padded on the left (attention_mask)
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Returns (B, T + n) with n <= max_new_tokens: the prompt followed by the sampled tokens.

        Prompts of different lengths: pad them on the left to one length T and pass ``attention_mask`` (B, T), 1 at
        tokens and 0 at padding; each row then continues exactly as it would alone (the padding stays in the output).
        Stops early once every row has produced ``eos_token_id``; rows that finished earlier are filled with it.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        was_training = self.training
        self.eval()
        try:
            out = self(input_ids, use_cache=True, return_logits=True, attention_mask=attention_mask)
            cache, logits = out.cache, out.logits[:, -1]
            tokens = [input_ids]
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for step in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
                if eos_token_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                    done = done | (nxt == eos_token_id)
                tokens.append(nxt[:, None])
                if (eos_token_id is not None and bool(done.all())) or step == max_new_tokens - 1:
                    break
                out = self(nxt[:, None], cache=cache, use_cache=True, return_logits=True)
                cache, logits = out.cache, out.logits[:, -1]
            return torch.cat(tokens, dim=1)
        finally:
            self.train(was_training)
