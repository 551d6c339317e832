"""Model FLOPs per token (forward + backward) and device peaks, for model FLOPs utilisation (MFU).

Convention (PaLM / nanoGPT): 6 FLOPs per parameter per token for every matmul weight (the input embedding is a lookup
and is left out), plus the token-mixing work that has no parameters, without halving for causal masks:

- softmax attention layer: 12 * H * D * T_eff per token, T_eff = min(T, window)  (QK^T and AV, forward + backward)
- DeltaNet layer (chunkwise form, chunk C, key dim K, value dim V, per head, forward):
  intra-chunk KK^T, QK^T, W = TK (3 x 2CK), U = TV and tril(QK^T)U' (2 x 2CV), state WS, QS, K^T U' (3 x 2KV);
  times 3 for forward + backward.

MFU is an estimate for comparing runs, not an exact count (the triangular solve and the norms are left out).
"""
from __future__ import annotations

__all__ = ["flops_per_token", "peak_flops"]

# Dense bf16 tensor-core peaks in FLOP/s, matched against torch.cuda.get_device_name() (first hit wins).
PEAK_BF16 = [("H200", 989.4e12), ("H100", 989.4e12), ("GH200", 989.4e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 125e12), ("L4", 121e12)]


def flops_per_token(config, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token of a `DeltaNetConfig` model with `n_params` parameters at context `seq_len`."""
    dense = 6.0 * (n_params - config.vocab_size * config.hidden_size)  # every weight but the embedding lookup
    h, d, c = config.num_heads, config.head_dim, config.chunk_size
    mixing = 0.0
    for i in range(config.num_layers):
        if config.is_attention_layer(i):
            t_eff = min(seq_len, config.attn_window or seq_len)
            mixing += 12.0 * h * d * t_eff
        else:
            mixing += 3.0 * h * (6.0 * c * d + 4.0 * c * d + 6.0 * d * d)
    return dense + mixing


def peak_flops(device_name: str | None) -> float | None:
    """bf16 dense peak of a known GPU name, else None (no MFU is logged)."""
    if not device_name:
        return None
    for key, value in PEAK_BF16:
        if key.lower() in device_name.lower():
            return value
    return None
