"""MAD's compression task in the encoder-decoder form of its paper: `MQARModule` with a compression decoder.

The model (any family) reads ``x_1 .. x_{L-1} z``; only its output at z is kept, and
`deltanet.compression.CompressionDecoder` predicts every input token, z included, from that one vector (the
decoder's docstring).  The decoder is a submodule of the LM (``model.compression_decoder``), so the optimizer's
parameter groups, gradient clipping, checkpoints and the fast loop treat it like any other weight; the LM head is
not used and is frozen.  Batches (``datamodules.mad.generate_compression``) carry ``input_ids`` and ``targets``
(B, L), with ``targets[:, i]`` predicted at position i.  ``val/acc`` is the share of target tokens predicted
right.

Select it with ``lit_module._target_: lit_modules.mad.MADCompressionModule`` (``experiment=mad`` does for
``data.task=compression``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deltanet.compression import CompressionDecoder
from lit_modules.mqar import MQARModule

__all__ = ["MADCompressionModule"]


class MADCompressionModule(MQARModule):
    """Args (besides `MQARModule`'s): max_length, the longest sequence the decoder decodes (its position table)."""

    def __init__(self, *args, max_length: int = 4096, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.model_config
        self.model.compression_decoder = CompressionDecoder(cfg.hidden_size, cfg.vocab_size, max_length, cfg.norm_eps,
                                                            cfg.initializer_range)
        self.model.lm_head.requires_grad_(False)  # unused here (the LM head is untied): not trained, DDP need not wait
        self._count_parameters()  # the decoder's matrices are decayed like the model's

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, L, vocab) float32 logits of every position, decoded from the last one's output."""
        h, _ = self.model.model(input_ids)  # (B, L, C)
        return self.model.compression_decoder(h[:, -1], input_ids.shape[1])

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.logits(batch["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)

    @staticmethod
    def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (batch["targets"] != -100).sum().clamp_min(1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, target = self.logits(batch["input_ids"]), batch["targets"]
        keep = target != -100
        n = int(keep.sum())
        if n == 0:
            return
        logits, target = logits[keep], target[keep]
        self.val_loss.update(F.cross_entropy(logits, target), weight=n)
        self.val_acc.update((logits.argmax(-1) == target).float().mean(), weight=n)
