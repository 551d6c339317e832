"""Stateful generation.

``model.generate(input_ids, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None)`` runs the
prompt once (prefill, the normal forward with ``use_cache``: chunk kernels for long prompts) and then one token
per step.

Prefill in pieces (``prefill_chunk_size``, default :data:`PREFILL_CHUNK_SIZE` tokens over all rows): the prompt
goes through the model in pieces along the sequence, each of at most that many tokens in all and each forward
continuing the cache the one before left (recurrent and conv states, KV caches and SWA ring buffers, RoPE positions
from the tokens seen; the left padding sliced with the piece).  The activations of one forward (projections, MLP
intermediates, the chunk kernels' intermediates) grow with the tokens it holds, B x its positions, so the pieces bound
the prefill's peak memory whatever the prompt's length and batch; the caches themselves are the same as in one
forward.  The cost: one forward's kernel launches and host work per piece, small against the compute of a piece.

Fast path (``fast=True``, the default): every layer decodes from static buffers allocated once for the whole
generation (the protocol of ``deltanet/layers/static.py``): the short-conv states, float32 recurrent states
(DeltaNet, Gated DeltaNet, retention, Mamba), a ring buffer of ``attn_window`` slots for sliding-window attention, and
for global attention a KV cache of ``max_length`` (prompt + new tokens) positions.  After the prefill its cache is
copied into these buffers; a step (embedding -> layers -> norm -> lm head -> sampling -> next input) then only
writes into them, with the position held in a device tensor, so on CUDA the whole step is captured once in a
``torch.cuda.CUDAGraph`` and replayed per token: no Python, no launch overhead, no allocation in the loop, and the
cost of a token is that of reading the weights and the states, the same at any context length for the recurrent
families.  On CPU (or ``cuda_graph=False``) the same step runs eagerly.

Sampling inside the graph: greedy (temperature 0) is an argmax; otherwise top-k / top-p truncate the logits and the
token is ``argmax(logits / temperature + Gumbel noise)`` (the Gumbel-max trick: exactly a draw from the softmax),
the uniforms from ``torch.rand``, which CUDA graphs support through the default generator's philox offsets (each
replay draws fresh numbers).  A user ``generator`` cannot be replayed that way: with one, the fast path runs
without a graph.

Reference path (``fast=False``): one eager forward per token with a :class:`deltanet.model.Cache` of per-layer
dicts (a global KV cache doubled when full).  Memory per sequence is constant in the context length except for
global-attention layers in both paths.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from .layers.static import step_linear

__all__ = ["GenerationMixin", "GenerationStats", "PREFILL_CHUNK_SIZE", "StaticCache", "check_prefill_chunk_size",
           "sample_next", "sample_static"]

# Prompt tokens in one prefill piece, over all rows: the default of generate(prefill_chunk_size=...), and of run.py's
# generation.prefill_chunk_size (conf/config.yaml repeats it; a test holds the two equal).  The activations of a forward
# grow with the tokens it holds, B x piece: the 340M DeltaNet peaked at 89 GB for one 8K-token forward at batch 64
# (512K tokens; benchmarks/results/bench_generate.md) and at 3.7 GB for a 64K-token prompt at batch 1.  65536 keeps a
# batch-1 prompt of up to 64K tokens one forward (no extra launches) and runs batch 64 in pieces of 1024 positions,
# each long enough that its launch overhead is small against its compute.
PREFILL_CHUNK_SIZE = 65536


def check_prefill_chunk_size(value) -> Optional[int]:
    """A ``prefill_chunk_size``: a positive int -> itself; None or 0 -> None (the whole prompt in one forward);
    anything else (negative, a float, a bool, a string) -> ValueError naming the argument."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"prefill_chunk_size must be an int >= 1 (tokens per prefill piece), or None or 0 for the "
                         f"whole prompt in one forward; got {value!r}")
    return int(value) or None


def _check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")


def _truncate(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """float32 logits (B, V) with the tokens outside top-k / top-p set to -inf (static shapes)."""
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
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits: (B, V) -> next token ids (B,). temperature 0 = greedy; top_k 0 / top_p 1 = no truncation."""
    _check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = _truncate(logits / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def sample_static(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """As :func:`sample_next`, but capturable in a CUDA graph: the Gumbel-max trick instead of multinomial."""
    _check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = _truncate(logits / temperature, top_k, top_p)
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_min_(1e-20)  # [tiny, 1)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


@dataclass
class GenerationStats:
    """What one ``generate(..., return_stats=True)`` call measured (seconds; CUDA events on CUDA)."""
    batch: int = 0
    prompt_tokens: int = 0  # T, per row (padding included)
    new_tokens: int = 0  # per row, the prefill's token included
    prefill_s: float = 0.0  # prefill (every piece) + copying its cache into the static buffers + the first token
    decode_s: float = 0.0  # the decode steps after the first token
    decode_steps: int = 0
    capture_s: float = 0.0  # warm-up and CUDA graph capture (before the prefill; 0 without a graph)
    cuda_graph: bool = False
    fast: bool = True

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens per second over all rows in the steady decode (batch * steps / decode time)."""
        return self.batch * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def prefill_ms(self) -> float:
        return 1e3 * self.prefill_s


@dataclass
class StaticCache:
    """Every buffer of a fast-path generation, allocated once: per layer the dict of its mixer's
    ``init_static_state``; the step's input token ``tok`` (B, 1), its position ``pos`` (0-dim), the output tokens
    ``out`` (B, max_new_tokens) with the next column ``col`` (1,), and ``done`` (B,) for end-of-sequence."""
    layers: list
    max_len: int
    tok: torch.Tensor
    pos: torch.Tensor
    out: torch.Tensor
    col: torch.Tensor
    done: torch.Tensor
    prompt_len: int = field(default=0)

    @classmethod
    def allocate(cls, model, batch: int, max_len: int, max_new_tokens: int, device, dtype) -> "StaticCache":
        layers = [layer.init_static_state(batch, max_len, device, dtype) for layer in model.model.layers]
        z = dict(device=device, dtype=torch.long)
        return cls(layers=layers, max_len=max_len, tok=torch.zeros(batch, 1, **z), pos=torch.zeros((), **z),
                   out=torch.zeros(batch, max(max_new_tokens, 1), **z), col=torch.zeros(1, **z),
                   done=torch.zeros(batch, dtype=torch.bool, device=device))

    def load(self, model, cache, first: torch.Tensor, eos_token_id: Optional[int]) -> None:
        """Fills the buffers from a prefill ``Cache`` and the first sampled token ``first`` (B,).  Each layer's
        prefill state is dropped from ``cache`` once copied, so the two copies of a KV cache coexist one layer at a
        time."""
        if cache.seen_tokens >= self.max_len:
            raise ValueError(f"a prompt of {cache.seen_tokens} tokens leaves no room in a static cache sized for "
                             f"{self.max_len} positions")
        for i, (layer, static) in enumerate(zip(model.model.layers, self.layers)):
            layer.load_static_state(static, cache.layers[i])
            cache.layers[i] = None
        self.prompt_len = cache.seen_tokens
        self.pos.fill_(cache.seen_tokens)
        self.tok.copy_(first[:, None])
        self.out[:, 0] = first
        self.col.fill_(1)
        self.done.copy_(first == eos_token_id if eos_token_id is not None else torch.zeros_like(self.done))


class GenerationMixin:
    """Adds :meth:`generate` to :class:`deltanet.DeltaNetForCausalLM`."""

    def _static_step(self, sc: StaticCache, temperature: float, top_k: int, top_p: float,
                     eos_token_id: Optional[int], generator: Optional[torch.Generator]) -> None:
        """One decode step on the static buffers: reads sc.tok at sc.pos, writes the next token into sc.tok and
        sc.out[:, sc.col], advances pos and col.  Device work only (capturable)."""
        h = self.model.step(sc.tok, sc.layers, sc.pos)  # (B, 1, C)
        nxt = sample_static(step_linear(h[:, 0], self.lm_head.weight), temperature, top_k, top_p, generator)  # (B,)
        if eos_token_id is not None:
            nxt = torch.where(sc.done, torch.full_like(nxt, eos_token_id), nxt)
            sc.done.logical_or_(nxt == eos_token_id)
        sc.tok.copy_(nxt[:, None])
        sc.out.index_copy_(1, sc.col, nxt[:, None])
        sc.pos.add_(1)
        sc.col.add_(1)

    @staticmethod
    def _check_inputs(input_ids, max_new_tokens, attention_mask, pad_token_id, max_length, device):
        if isinstance(input_ids, (list, tuple)):
            rows = [list(r) for r in input_ids]
            lengths = sorted({len(r) for r in rows})
            if len(lengths) > 1:
                raise ValueError(f"input_ids rows have different lengths {lengths}: pad them on the left to one "
                                 f"length and pass attention_mask (1 = token, 0 = padding)")
            input_ids = torch.tensor(rows, dtype=torch.long, device=device)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if attention_mask is None and pad_token_id is not None and bool((input_ids[:, 0] == pad_token_id).any()):
            # a row that starts with the padding id was padded to the batch's length: without the mask its padding
            # would be read as tokens
            rows = (input_ids[:, 0] == pad_token_id).nonzero().flatten().tolist()
            raise ValueError(f"rows {rows} of input_ids start with pad_token_id={pad_token_id} but no attention_mask "
                             f"was given: rows of different lengths need attention_mask (1 = token, 0 = padding)")
        T = input_ids.shape[1]
        if max_length is not None and T + max_new_tokens > max_length:
            raise ValueError(f"a prompt of {T} tokens plus max_new_tokens={max_new_tokens} does not fit the cache "
                             f"size max_length={max_length}")
        return input_ids

    @torch.no_grad()
    def generate(
        self,
        input_ids: Union[torch.Tensor, Sequence[Sequence[int]]],  # (B, T) long; rows padded on the left
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        fast: bool = True,
        cuda_graph: Optional[bool] = None,
        max_length: Optional[int] = None,
        pad_token_id: Optional[int] = None,
        streamer: Optional[Callable[[torch.Tensor], None]] = None,
        return_stats: bool = False,
        prefill_chunk_size: Optional[int] = PREFILL_CHUNK_SIZE,
    ):
        """Returns (B, T + n) with n <= max_new_tokens: the prompt followed by the sampled tokens (and, with
        ``return_stats``, a :class:`GenerationStats` as well: ``(tokens, stats)``).

        Prompts of different lengths: pad them on the left to one length T and pass ``attention_mask`` (B, T), 1 at
        tokens and 0 at padding; each row then continues exactly as it would alone (the padding stays in the output).
        ``pad_token_id`` (optional) guards against forgetting the mask: rows that start with it need one.
        Stops early once every row has produced ``eos_token_id``; rows that finished earlier are filled with it.

        fast: the static-state step (module docstring); False: the per-token forward with a growing cache (also
            taken when a layer lacks the static protocol of deltanet/layers/static.py; ``stats.fast`` says which).
        cuda_graph: capture the fast step in a CUDA graph (default: on CUDA, without a user ``generator``).
        max_length: positions the static cache is sized for (default T + max_new_tokens); a larger request fails.
        streamer: called with each new column of tokens (B,) on the CPU as soon as it is sampled.
        prefill_chunk_size: the prompt runs through the model in pieces of at most this many tokens over all B rows
            (default :data:`PREFILL_CHUNK_SIZE`), i.e. ``max(1, prefill_chunk_size // B)`` positions of every row per
            piece, each continuing the caches of the one before; the result equals one forward over the whole prompt
            up to float rounding.  Bounds the prefill's activation memory by prefill_chunk_size tokens instead of
            B x T; costs one forward's kernel launches per piece.  None or 0: the whole prompt in one forward.
            ``stats.prefill_s`` covers all pieces.
        """
        device = next(self.parameters()).device
        prefill_chunk_size = check_prefill_chunk_size(prefill_chunk_size)
        input_ids = self._check_inputs(input_ids, max_new_tokens, attention_mask, pad_token_id, max_length, device)
        if prefill_chunk_size is not None:  # tokens over the batch -> positions per row
            prefill_chunk_size = max(1, prefill_chunk_size // input_ids.shape[0])
        if max_new_tokens == 0:
            return (input_ids, GenerationStats(batch=input_ids.shape[0], prompt_tokens=input_ids.shape[1],
                                               fast=fast)) if return_stats else input_ids
        _check_sampling(temperature, top_k, top_p)
        if fast and not self._supports_static_state():
            fast = False  # a mixer without the static protocol (deltanet/layers/static.py): the reference loop
        was_training = self.training
        self.eval()
        try:
            run = self._generate_static if fast else self._generate_eager
            out, stats = run(input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator,
                             attention_mask, cuda_graph, max_length, streamer, prefill_chunk_size)
        finally:
            self.train(was_training)
        return (out, stats) if return_stats else out

    def _supports_static_state(self) -> bool:
        mixers = [m for b in self.model.layers for m in (b.mixer, getattr(b, "mixer2", None)) if m is not None]
        return all(callable(getattr(m, name, None)) for m in mixers
                   for name in ("init_static_state", "load_static_state", "step"))

    # ---- timing helpers: CUDA events on CUDA (no sync inside the timed loop), perf_counter on CPU ----
    @staticmethod
    def _clock(device: torch.device):
        if device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    @staticmethod
    def _elapsed(a, b) -> float:
        if isinstance(a, float):
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1e3

    def _prefill(self, input_ids, attention_mask, chunk_size: Optional[int] = None):
        """The prompt through the normal forward with use_cache: (last position's logits (B, V), Cache).

        chunk_size: at most this many tokens per row in one forward (None or 0: the whole prompt at once).  Each piece
        continues the cache the one before returned; its padding is its columns of the prompt's left padding (None
        once the padding has ended), and a global KV cache is allocated once for the whole prompt (``reserve``)."""
        from .model import left_padding
        pad = left_padding(attention_mask, input_ids)
        T = input_ids.shape[1]
        step = check_prefill_chunk_size(chunk_size) or T
        if step >= T:
            h, cache = self.model(input_ids, use_cache=True, pad=pad)
            return self.lm_head(h[:, -1]), cache
        cache = None
        for start in range(0, T, step):
            piece_pad = None if pad is None else pad[:, start:start + step]
            if piece_pad is not None and not bool(piece_pad.any()):
                piece_pad = None  # every row's padding ended before this piece
            h, cache = self.model(input_ids[:, start:start + step], cache=cache, use_cache=True, pad=piece_pad,
                                  reserve=T)
            if start + step < T:
                del h  # (B, step, C): freed before the next piece runs
        return self.lm_head(h[:, -1]), cache

    def _generate_static(self, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator,
                         attention_mask, cuda_graph, max_length, streamer, prefill_chunk_size=None):
        B, T = input_ids.shape
        device = input_ids.device
        max_len = max_length if max_length is not None else T + max_new_tokens
        use_graph = device.type == "cuda" and generator is None if cuda_graph is None else bool(cuda_graph)
        if use_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, it is on {device}")
        if use_graph and generator is not None:
            raise ValueError("cuda_graph=True cannot replay a user generator: leave cuda_graph unset (the fast step "
                             "then runs without a graph) or drop the generator (the graph uses the default one)")
        stats = GenerationStats(batch=B, prompt_tokens=T, cuda_graph=use_graph, fast=True)
        sc = StaticCache.allocate(self, B, max_len, max_new_tokens, device, self.lm_head.weight.dtype)

        def step():
            self._static_step(sc, temperature, top_k, top_p, eos_token_id, generator)

        graph = None
        if use_graph and max_new_tokens > 1:  # capture before the prefill: warm-up writes garbage, load overwrites
            t0 = time.perf_counter()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # compiles Triton kernels, initialises cuBLAS outside the capture
                for _ in range(2):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            torch.cuda.synchronize()
            stats.capture_s = time.perf_counter() - t0
        t0 = self._clock(device)
        logits, cache = self._prefill(input_ids, attention_mask, prefill_chunk_size)
        sc.load(self, cache, sample_static(logits, temperature, top_k, top_p, generator), eos_token_id)
        del cache
        t1 = self._clock(device)
        if streamer is not None:
            streamer(sc.out[:, 0].cpu())
        n = 1
        while n < max_new_tokens:
            if eos_token_id is not None and n % 16 == 0 and bool(sc.done.all()):
                break  # checked every 16 tokens: one host sync instead of one per token
            graph.replay() if graph is not None else step()
            if streamer is not None:
                streamer(sc.out[:, n].cpu())
            n += 1
        t2 = self._clock(device)
        stats.prefill_s, stats.decode_s = self._elapsed(t0, t1), self._elapsed(t1, t2)
        new = sc.out[:, :n]
        if eos_token_id is not None:  # end at the token where the last row finished, as the step-by-step loop does
            finished = (new == eos_token_id).cumsum(1) > 0  # (B, n)
            all_done = finished.all(0).nonzero()
            if all_done.numel():
                n = int(all_done[0]) + 1
                new = new[:, :n]
        stats.new_tokens, stats.decode_steps = n, n - 1
        return torch.cat([input_ids, new], dim=1), stats

    def _generate_eager(self, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator,
                        attention_mask, cuda_graph, max_length, streamer, prefill_chunk_size=None):
        """The reference loop: one forward per token through the layers' cached (growing) path."""
        B, T = input_ids.shape
        stats = GenerationStats(batch=B, prompt_tokens=T, fast=False)
        t0 = self._clock(input_ids.device)
        logits, cache = self._prefill(input_ids, attention_mask, prefill_chunk_size)
        tokens = [input_ids]
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        t1 = None
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done = done | (nxt == eos_token_id)
            tokens.append(nxt[:, None])
            if t1 is None:
                t1 = self._clock(input_ids.device)
            if streamer is not None:
                streamer(nxt.cpu())
            if (eos_token_id is not None and bool(done.all())) or step == max_new_tokens - 1:
                break
            out = self(nxt[:, None], cache=cache, use_cache=True, return_logits=True)
            cache, logits = out.cache, out.logits[:, -1]
        t2 = self._clock(input_ids.device)
        stats.prefill_s, stats.decode_s = self._elapsed(t0, t1), self._elapsed(t1, t2)
        stats.new_tokens = len(tokens) - 1
        stats.decode_steps = stats.new_tokens - 1
        return torch.cat(tokens, dim=1), stats
