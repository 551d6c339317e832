"""DeltaNet language model (and its hybrids / the Transformer++ and Mamba baselines), one file top to bottom.

    x = Embedding(input_ids)                                   # (B, T, C)
    for each layer:  x = x + Mixer(RMSNorm(x))                 # (Gated) DeltaNet, retention, GLA or attention (family)
                     x = x + SwiGLU(RMSNorm(x))                # family mamba: x = x + Mamba(RMSNorm(x)) here too
    logits = LMHead(RMSNorm(x))                                # untied, (B, T, vocab)

Init: normal(0, 0.02) for embeddings and linears; the residual output projections (mixer ``o_proj``, MLP
``down_proj``, Mamba ``out_proj``) use std 0.02 / sqrt(2 * num_layers); Mamba's own parameters (dt_proj, A_log, D,
conv bias) then get the published S6 initialisation (``Mamba.reset_ssm_parameters``).

Loss: with ``labels`` the model never builds the float32 logits of the whole batch.  It gathers the hidden states
of the positions that have a label, and computes the cross-entropy over chunks of ``config.loss_chunk_size``
tokens under activation checkpointing: each chunk's logits (in the compute dtype, upcast to float32 inside
the chunk) exist only while that chunk is processed, in the forward and again in the backward pass.  Peak
logits memory is loss_chunk_size * vocab floats instead of B * T * vocab.  With the fused glue
(``config.use_fused``) the loss is ``kernels.cross_entropy.linear_cross_entropy`` instead: the same chunks, but each
chunk's gradient is formed in the forward over its logits in place, so nothing is recomputed and no float32 logits
exist.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kernels.cross_entropy import linear_cross_entropy

from .config import DeltaNetConfig
from .generation import GenerationMixin
from .layers import (Attention, DeltaNet, GatedDeltaNet, GatedLinearAttention, Mamba, MultiScaleRetention, RMSNorm,
                     SwiGLU)

__all__ = ["DeltaNetForCausalLM", "DeltaNetModel", "Block", "Cache", "CausalLMOutput", "chunked_cross_entropy",
           "left_padding"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class Cache:
    """Generation state: one dict per layer (delta-rule + conv states, a KV cache / ring buffer, or for Mamba
    {"mixer": ..., "mixer2": ...} with each block's conv and SSM states)."""
    layers: list = field(default_factory=list)
    seen_tokens: int = 0


@dataclass
class CausalLMOutput:
    loss: Optional[torch.Tensor] = None  # scalar mean cross-entropy (with labels)
    logits: Optional[torch.Tensor] = None  # (B, T, V); None with labels unless return_logits=True
    cache: Optional[Cache] = None


class Block(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.is_mamba = config.family == "mamba"
        if self.is_mamba:  # two residual Mamba blocks, no MLP (config.py: the paper's 48 blocks for 24 layers)
            self.mixer: nn.Module = Mamba(config, 2 * layer_idx)
            self.mixer2_norm = RMSNorm(config.hidden_size, config.norm_eps)
            self.mixer2 = Mamba(config, 2 * layer_idx + 1)
            return
        if config.is_attention_layer(layer_idx):
            self.mixer = Attention(config, layer_idx, window=config.attn_window)
        elif config.family.startswith("gated_deltanet"):
            self.mixer = GatedDeltaNet(config, layer_idx)
        elif config.family == "retnet":
            self.mixer = MultiScaleRetention(config, layer_idx)
        elif config.family == "gla":
            self.mixer = GatedLinearAttention(config, layer_idx)
        else:
            self.mixer = DeltaNet(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, use_cache: bool = False,
                cu_seqlens: Optional[torch.Tensor] = None, offset: int = 0, pad: Optional[torch.Tensor] = None,
                fused: bool = False, reserve: int = 0):
        """fused: Triton RMSNorms (the residual add folded into the MLP norm) and SwiGLU tail; same math.
        reserve: positions a global KV cache is allocated for at once (DeltaNetModel.forward)."""
        if self.is_mamba:  # fused: the first block's residual add folded into the second block's norm
            state = state or {}
            h, s1 = self.mixer(self.attn_norm(x, fused=fused), state=state.get("mixer"), use_cache=use_cache,
                               cu_seqlens=cu_seqlens, pad=pad)
            n, x = self.mixer2_norm(x, residual=h, fused=fused)
            h, s2 = self.mixer2(n, state=state.get("mixer2"), use_cache=use_cache, cu_seqlens=cu_seqlens, pad=pad)
            return x + h, ({"mixer": s1, "mixer2": s2} if use_cache else None)
        h, new_state = self.mixer(self.attn_norm(x, fused=fused), state=state, use_cache=use_cache,
                                  cu_seqlens=cu_seqlens, offset=offset, pad=pad, reserve=reserve)
        n, x = self.mlp_norm(x, residual=h, fused=fused)  # x + h, and its norm
        x = x + self.mlp(n, fused=fused)
        return x, new_state

    # ---- static decoding state: each mixer's protocol (deltanet/layers/static.py), Mamba's two blocks as one ----
    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        if self.is_mamba:
            return {"mixer": self.mixer.init_static_state(batch, max_len, device, dtype),
                    "mixer2": self.mixer2.init_static_state(batch, max_len, device, dtype)}
        return self.mixer.init_static_state(batch, max_len, device, dtype)

    def load_static_state(self, static: dict, state: dict) -> None:
        if self.is_mamba:
            self.mixer.load_static_state(static["mixer"], state["mixer"])
            self.mixer2.load_static_state(static["mixer2"], state["mixer2"])
        else:
            self.mixer.load_static_state(static, state)

    def step(self, x: torch.Tensor, r: Optional[torch.Tensor], static: dict, pos: torch.Tensor,
             fused: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: the residual stream is x + r (r None: 0), (B, 1, C) each; returns the next block's (x, r), the
        state buffers updated in place.  The same math as forward, with the last residual add left to the next
        block's norm (one kernel fewer per layer)."""
        if self.is_mamba:
            x = x if r is None else x + r
            x = x + self.mixer.step(self.attn_norm(x), static["mixer"], pos)
            return x, self.mixer2.step(self.mixer2_norm(x), static["mixer2"], pos)
        if r is None:
            n = self.attn_norm(x, fused=fused)
        else:
            n, x = self.attn_norm(x, residual=r, fused=fused)
        h = self.mixer.step(n, static, pos)
        n, x = self.mlp_norm(x, residual=h, fused=fused)
        return x, self.mlp(n, fused=fused)


class DeltaNetModel(nn.Module):
    def __init__(self, config: DeltaNetConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(self, input_ids: torch.Tensor, cache: Optional[Cache] = None, use_cache: bool = False,
                cu_seqlens: Optional[torch.Tensor] = None, pad: Optional[torch.Tensor] = None, reserve: int = 0):
        """pad: optional (B, T) bool, True at left-padding positions (see DeltaNetForCausalLM.forward); with a cache,
        the padding of these T tokens (a prompt prefilled in pieces: the piece's columns of the prompt's padding).
        reserve: positions a global-attention KV cache is allocated for when it is created or grows, if that is
        enough (the prefill in pieces passes the prompt's length: one allocation instead of doubling per piece)."""
        x = self.embeddings(input_ids)  # (B, T, C)
        offset = cache.seen_tokens if cache is not None else 0
        new_cache = Cache(seen_tokens=offset + input_ids.shape[1]) if use_cache else None
        fused = self.config.use_fused(input_ids.is_cuda)
        for i, layer in enumerate(self.layers):
            state = cache.layers[i] if cache is not None else None
            x, s = layer(x, state=state, use_cache=use_cache, cu_seqlens=cu_seqlens, offset=offset, pad=pad,
                         fused=fused, reserve=reserve)
            if use_cache:
                new_cache.layers.append(s)
        return self.norm(x, fused=fused), new_cache

    def step(self, input_ids: torch.Tensor, static: list, pos: torch.Tensor) -> torch.Tensor:
        """input_ids (B, 1) at position ``pos`` (0-dim long tensor) -> normed hidden states (B, 1, C); ``static``:
        one dict of buffers per layer (Block.init_static_state), updated in place."""
        x, r = self.embeddings(input_ids), None
        fused = self.config.use_fused(input_ids.is_cuda)
        for layer, st in zip(self.layers, static):
            x, r = layer.step(x, r, st, pos, fused=fused)
        return self.norm(x, residual=r, fused=fused)[0]


def left_padding(attention_mask: Optional[torch.Tensor], input_ids: torch.Tensor, cache: Optional[Cache] = None,
                 cu_seqlens: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """attention_mask (B, T) of 1/0 (or bool) -> (B, T) bool, True at padding; None when there is no padding.
    Only left padding (each row: zeros, then ones, at least one 1), and only without a cache or cu_seqlens."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must match input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    keep = attention_mask.to(device=input_ids.device) != 0
    if bool(keep.all()):
        return None
    if cu_seqlens is not None:
        raise ValueError("attention_mask with padding cannot be combined with cu_seqlens (packing needs no padding)")
    if cache is not None:
        raise ValueError("attention_mask with padding is only allowed without a cache (in the prefill); later tokens "
                         "of every row are real")
    if bool((keep[:, 1:].int() < keep[:, :-1].int()).any()) or not bool(keep[:, -1].all()):
        raise ValueError("attention_mask must be left padding: in every row zeros first, then ones, ending in a 1")
    return ~keep


def _ce_sum(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight)  # (n, V) in the compute dtype
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int,
                          ignore_index: int = -100) -> torch.Tensor:
    """Mean CE of ``h @ weight.T`` against ``labels`` over non-ignored rows, chunk by chunk.

    h: (N, C); weight: (V, C); labels: (N,) long.  Each chunk runs under non-reentrant checkpointing, so only
    (chunk, V) logits are alive at a time, in the forward and the backward; a single chunk runs without checkpointing.
    """
    keep = labels != ignore_index
    h, labels = h[keep], labels[keep]
    n = labels.numel()
    if n == 0:
        return h.sum() * 0.0  # no target: zero loss that still has a graph
    if n <= chunk_size:  # one chunk: its logits are the peak anyway, recomputing them would only cost time
        return _ce_sum(h, weight, labels) / n
    total = h.new_zeros((), dtype=torch.float32)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    for s in range(0, n, chunk_size):
        hs, ls = h[s:s + chunk_size], labels[s:s + chunk_size]
        total = total + (checkpoint(_ce_sum, hs, weight, ls, use_reentrant=False) if grad
                         else _ce_sum(hs, weight, ls))
    return total / n


class DeltaNetForCausalLM(GenerationMixin, nn.Module):
    """Causal LM for every family of :class:`DeltaNetConfig`.

    ``forward(input_ids (B, T) long, labels=None, cu_seqlens=None)`` -> :class:`CausalLMOutput`:
    ``.loss`` = mean next-token cross-entropy (labels aligned with input_ids, shifted inside, -100 ignored) and
    ``.logits`` (B, T, V) when no labels are given (pass ``return_logits=True`` to get them with labels too).
    ``cu_seqlens`` ((N+1,) offsets, B = 1) packs N sequences: no state or attention crosses their borders.
    ``attention_mask`` ((B, T), 1 = token, 0 = padding) allows rows of different lengths padded on the left, in a call
    without a cache (training or the prefill of generation): padding positions do not change any delta-rule, conv or
    attention state, so every row's outputs at its tokens are those of the row alone. Their own outputs are
    meaningless; give them label -100.
    """

    def __init__(self, config: DeltaNetConfig):
        super().__init__()
        if isinstance(config, dict):
            config = DeltaNetConfig.from_dict(config)
        self.config = config
        self.model = DeltaNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("mixer.o_proj.weight") or name.endswith("mlp.down_proj.weight") \
                    or name.endswith("out_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.num_layers))
        for m in self.modules():
            if isinstance(m, Mamba):
                m.reset_ssm_parameters()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.model.embeddings.weight.numel()
        return n

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) long
        labels: Optional[torch.Tensor] = None,  # (B, T) long, -100 = ignored
        cu_seqlens: Optional[torch.Tensor] = None,  # (N+1,) with B = 1
        cache: Optional[Cache] = None,
        use_cache: bool = False,
        return_logits: Optional[bool] = None,
        attention_mask: Optional[torch.Tensor] = None,  # (B, T): 1 = token, 0 = left padding
    ) -> CausalLMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
        if cu_seqlens is not None and input_ids.shape[0] != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got input_ids {tuple(input_ids.shape)}")
        pad = left_padding(attention_mask, input_ids, cache, cu_seqlens)
        h, new_cache = self.model(input_ids, cache=cache, use_cache=use_cache, cu_seqlens=cu_seqlens, pad=pad)
        if return_logits is None:
            return_logits = labels is None
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must match input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            shift = labels[:, 1:]
            if cu_seqlens is not None:  # the last token of a packed sequence does not predict the next one
                shift = shift.clone()
                ends = cu_seqlens[1:-1].to(shift.device).long() - 1
                shift[0, ends[(ends >= 0) & (ends < shift.shape[1])]] = -100
            if self.config.use_fused(input_ids.is_cuda):  # gradient formed in the forward (kernels/cross_entropy)
                shift = F.pad(shift, (0, 1), value=-100)  # the last position predicts nothing: h needs no copy
                loss = linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.lm_head.weight, shift.reshape(-1),
                                            chunk_size=self.config.loss_chunk_size)
            else:
                loss = chunked_cross_entropy(h[:, :-1].reshape(-1, h.shape[-1]), self.lm_head.weight,
                                             shift.reshape(-1), self.config.loss_chunk_size)
        logits = self.lm_head(h) if return_logits else None
        return CausalLMOutput(loss=loss, logits=logits, cache=new_cache)

    # ---- persistence ----
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into directory ``path``."""
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        self.config.save(os.path.join(path, CONFIG_NAME))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
                        **config_overrides: Any) -> "DeltaNetForCausalLM":
        """Loads a directory written by :meth:`save_pretrained` (config fields may be overridden, e.g. backend)."""
        from safetensors.torch import load_file
        with open(os.path.join(path, CONFIG_NAME)) as f:
            d = json.load(f)
        model = cls(DeltaNetConfig.from_dict({**d, **config_overrides}))
        model.load_state_dict(load_file(os.path.join(path, WEIGHTS_NAME), device=str(map_location)))
        return model.to(map_location)
